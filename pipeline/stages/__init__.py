"""Stages: a pure-ish ``handle(batch) -> outgoing`` each, run by :mod:`pipeline.stages.worker`.

A stage never polls or commits; it turns one batch of records into the messages to
produce (vectors, dead letters) and performs its own durable side effects (the sink's
Qdrant writes). The same stage objects run over Kafka and over the in-process bus.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from pipeline.bus import Outgoing, Record
from pipeline.core.errors import EmbedstreamError

log = logging.getLogger(__name__)

_MAX_HEADER_MESSAGE = 1000
#: A dead letter carries at most this much of the original value and key, so writing it
#: can never fail for size, whatever arrived (a 2 MB poison record, a huge key).
DLQ_VALUE_BYTES = 64 * 1024
DLQ_KEY_CHARS = 1024


class Stage(Protocol):
    name: str

    def handle(self, records: Sequence[Record]) -> list[Outgoing]: ...


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
