"""Where a source puts input it cannot turn into a change event: the dead-letter queue.

A bad JSON line or an undecodable CDC record never stops a pass (invariant 5): the source
reports it and hands it to a :class:`Rejects`, which writes a dead letter with the same
headers the stages write (:func:`pipeline.stages.dead_letter`): the local log of the
embedded mode, or the ``<prefix>.dlq`` topic of a Kafka deployment.
"""

from __future__ import annotations

from typing import Protocol

from pipeline.bus import Producer, Record
from pipeline.bus.dead_letters import LocalDeadLetters, dead_letter
from pipeline.core.errors import EmbedstreamError

__all__ = ["KafkaRejects", "LocalRejects", "Rejects"]

STAGE = "source"


class Rejects(Protocol):
    def reject(self, record: Record, error: EmbedstreamError) -> None:
        """Dead-letter ``record`` (its topic/offset say where it came from) durably."""


class LocalRejects:
    """The embedded mode's dead-letter log (``state_dir/dlq.jsonl``)."""

    def __init__(self, letters: LocalDeadLetters) -> None:
        self._letters = letters

    def reject(self, record: Record, error: EmbedstreamError) -> None:
        letter = dead_letter(record, error, STAGE, "")
        self._letters.append([Record("", 0, 0, letter.key, letter.value, letter.headers)])


class KafkaRejects:
    """The DLQ topic, through any bus producer; returns once the broker acknowledged."""

    def __init__(self, producer: Producer, dlq_topic: str) -> None:
        self._producer = producer
        self._topic = dlq_topic

    def reject(self, record: Record, error: EmbedstreamError) -> None:
        self._producer.send([dead_letter(record, error, STAGE, self._topic)])
