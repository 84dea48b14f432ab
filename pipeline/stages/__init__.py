"""Stages: a pure-ish ``handle(batch) -> outgoing`` each, run by :mod:`pipeline.worker`.

A stage never polls or commits; it turns one batch of records into the messages to
produce (vectors, dead letters) and performs its own durable side effects (the sink's
Qdrant writes). The same stage objects run over Kafka and over the in-process bus.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from pipeline.bus import Outgoing, Record
from pipeline.errors import EmbedstreamError

log = logging.getLogger(__name__)

_MAX_HEADER_MESSAGE = 1000


class Stage(Protocol):
    name: str

    def handle(self, records: Sequence[Record]) -> list[Outgoing]: ...


def dead_letter(record: Record, error: EmbedstreamError, stage: str, dlq_topic: str) -> Outgoing:
    """The original bytes plus enough context to understand and replay them."""
    log.warning(
        "dead-lettered %s at %s[%d]@%d: %s",
        record.key,
        record.topic,
        record.partition,
        record.offset,
        error,
        extra={"reason": error.reason, "stage": stage},
    )
    headers = (
        ("error.class", type(error).__name__.encode()),
        ("error.reason", error.reason.encode()),
        ("error.message", str(error)[:_MAX_HEADER_MESSAGE].encode("utf-8", "replace")),
        ("stage", stage.encode()),
        ("original.topic", record.topic.encode()),
        ("original.partition", str(record.partition).encode()),
        ("original.offset", str(record.offset).encode()),
    )
    return Outgoing(dlq_topic, record.key or "", record.value, headers)
