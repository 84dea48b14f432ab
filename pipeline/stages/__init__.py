"""Stages: a pure-ish ``handle(batch) -> outgoing`` each, run by :mod:`pipeline.stages.worker`.

A stage never polls or commits; it turns one batch of records into the messages to
produce (vectors, dead letters) and performs its own durable side effects (the sink's
Qdrant writes). The same stage objects run over Kafka and over the in-process bus.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from pipeline.bus import Outgoing, Record


class Stage(Protocol):
    name: str

    def handle(self, records: Sequence[Record]) -> list[Outgoing]: ...
