"""Dead letters, the one codec: writing one (:func:`dead_letter`), reading them back from the
Kafka DLQ topic or the embedded mode's local log, and replaying them.

Replay re-publishes the original bytes to the original topic. It needs no bookkeeping:
replaying an event twice is harmless, because the sink ignores what the index already
reflects (same or older version), so an operator can simply replay after every fix. A
dead letter whose value was cut to its bounded prefix cannot be replayed; its source must
send the document again.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.bus import Bus, Outgoing, Record
from pipeline.core.errors import EmbedstreamError
from pipeline.core.names import Topics

log = logging.getLogger(__name__)

_READ_TIMEOUT_S = 10.0
_MAX_HEADER_MESSAGE = 1000
#: A dead letter carries at most this much of the original value and key, so writing it
#: can never fail for size, whatever arrived (a 2 MB poison record, a huge key).
DLQ_VALUE_BYTES = 64 * 1024
DLQ_KEY_CHARS = 1024


def dead_letter(record: Record, error: EmbedstreamError, stage: str, dlq_topic: str) -> Outgoing:
    """A bounded prefix of the original bytes plus enough context to understand them, and
    to replay them when they were kept whole (``original.truncated`` says whether)."""
    key = record.key or ""
    log.warning(
        "dead-lettered %s at %s[%d]@%d: %s",
        key[:200],
        record.topic,
        record.partition,
        record.offset,
        error,
        extra={"reason": error.reason, "stage": stage},
    )
    value = record.value
    truncated = (value is not None and len(value) > DLQ_VALUE_BYTES) or len(key) > DLQ_KEY_CHARS
    headers = (
        ("error.class", type(error).__name__.encode()),
        ("error.reason", error.reason.encode()),
        ("error.message", str(error)[:_MAX_HEADER_MESSAGE].encode("utf-8", "replace")),
        ("stage", stage.encode()),
        ("original.topic", record.topic.encode()),
        ("original.partition", str(record.partition).encode()),
        ("original.offset", str(record.offset).encode()),
        ("original.bytes", str(len(value) if value is not None else 0).encode()),
        ("original.truncated", b"true" if truncated else b"false"),
    )
    prefix = value[:DLQ_VALUE_BYTES] if value is not None else None
    return Outgoing(dlq_topic, key[:DLQ_KEY_CHARS], prefix, headers)


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
    truncated: bool
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
            truncated=headers.get("original.truncated") == "true",
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
        and letter.original_topic and not letter.truncated
    ]  # fmt: skip
    if not dry_run and chosen:
        producer = bus.producer()
        try:
            producer.send([Outgoing(d.original_topic, d.key, d.value) for d in chosen])
        finally:
            producer.close()
    return len(chosen)


class LocalDeadLetters:
    """The embedded mode's dead-letter log: one JSON line per dead letter under state_dir,
    so ``embedstream dlq list`` works without Kafka and survives the process."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def append(self, records: Sequence[Record]) -> None:
        if not records:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with self._path.open("a", encoding="utf-8") as log:
            for record in records:
                entry = {
                    "key": record.key or "",
                    "headers": {k: v.decode("utf-8", "replace") for k, v in record.headers},
                    "value": base64.b64encode(record.value).decode() if record.value is not None else None,
                    "at": time.time(),
                }
                log.write(json.dumps(entry, ensure_ascii=False) + "\n")

    def read(self, limit: int = 1000) -> list[DeadLetter]:
        """The newest ``limit`` dead letters, oldest first; unreadable lines are skipped."""
        try:
            lines = self._path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        return [letter for line in lines[-limit:] if (letter := _local_letter(line)) is not None]


def _local_letter(line: str) -> DeadLetter | None:
    try:
        entry = json.loads(line)
        value = base64.b64decode(entry["value"]) if entry.get("value") is not None else None
        headers = tuple((str(k), str(v).encode()) for k, v in dict(entry["headers"]).items())
        record = Record("", 0, 0, str(entry["key"]), value, headers)
    except (ValueError, KeyError, TypeError):
        return None  # a line cut short by a crash
    return DeadLetter.from_record(record)
