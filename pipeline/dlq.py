"""Reading and replaying the dead-letter topic.

Replay re-publishes the original bytes to the original topic. It needs no bookkeeping:
replaying an event twice is harmless, because the sink ignores what the index already
reflects (same or older version), so an operator can simply replay after every fix.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from pipeline.bus import Bus, Outgoing, Record
from pipeline.topics import Topics

_READ_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class DeadLetter:
    key: str
    reason: str
    error_class: str
    message: str
    stage: str
    original_topic: str
    original_partition: str
    original_offset: str
    value: bytes | None

    @classmethod
    def from_record(cls, record: Record) -> DeadLetter:
        headers = {k: v.decode("utf-8", "replace") for k, v in record.headers}
        return cls(
            key=record.key or "",
            reason=headers.get("error.reason", "unknown"),
            error_class=headers.get("error.class", ""),
            message=headers.get("error.message", ""),
            stage=headers.get("stage", ""),
            original_topic=headers.get("original.topic", ""),
            original_partition=headers.get("original.partition", ""),
            original_offset=headers.get("original.offset", ""),
            value=record.value,
        )

    def as_json(self) -> dict[str, Any]:
        fields = dict(self.__dict__)
        value = fields.pop("value")
        fields["bytes"] = len(value) if value is not None else 0
        return fields


def read_dead_letters(bus: Bus, topics: Topics, limit: int = 1000) -> list[DeadLetter]:
    """Everything in the DLQ, oldest first, read by a throwaway group that never commits."""
    consumer = bus.consumer(f"{topics.prefix}.dlq-reader-{uuid.uuid4().hex[:8]}", [topics.dlq])
    letters: list[DeadLetter] = []
    deadline = time.monotonic() + _READ_TIMEOUT_S
    try:
        while len(letters) < limit and time.monotonic() < deadline:
            records = consumer.poll(min(500, limit - len(letters)), 1.0)
            if not records and letters:
                break  # caught up
            letters.extend(DeadLetter.from_record(r) for r in records)
    finally:
        consumer.close()
    return letters[:limit]


def replay_dead_letters(
    bus: Bus, topics: Topics, *, reason: str | None = None, key: str | None = None, dry_run: bool = False
) -> int:
    chosen = [
        letter
        for letter in read_dead_letters(bus, topics, limit=1_000_000)
        if (reason is None or letter.reason == reason) and (key is None or letter.key == key)
        and letter.original_topic
    ]  # fmt: skip
    if not dry_run and chosen:
        producer = bus.producer()
        try:
            producer.send([Outgoing(d.original_topic, d.key, d.value) for d in chosen])
        finally:
            producer.close()
    return len(chosen)
