"""Kafka adapter of the ``Bus`` port, on kafka-python 3.

Delivery contract the worker relies on (at-least-once, idempotent writes downstream):

* :meth:`KafkaProducerAdapter.send` returns only when every message is acknowledged by
  all in-sync replicas; anything less raises :class:`BusUnavailable`, so the worker
  retries the whole batch and never commits offsets for output that may be missing.
* offsets are committed explicitly, per processed batch (auto-commit is off), so an
  uncommitted batch is redelivered to whoever owns the partition next.
* :meth:`KafkaConsumerAdapter.processing` keeps the group membership alive while a slow
  batch runs, so a long batch is not mistaken for a dead worker.
* one message size limit (``max_message_bytes``) holds for the producer, the consumer's
  fetches and every topic, so whatever one stage may write the next can read.
* a rejected password or certificate raises :class:`AuthenticationFailed` within
  seconds instead of being retried until a timeout; it never names a secret.
* keys are text, but any key bytes survive a round trip: keys that are not UTF-8 decode
  with ``surrogateescape`` and encode back to the same bytes.

kafka-python types and exceptions never leave this package: records become
:class:`Record`, library errors become :mod:`pipeline.core.errors` types at the boundary.
The parts: :mod:`.connection` (client settings), :mod:`.producer`, :mod:`.consumer`,
:mod:`.admin` (topics and groups from outside), :mod:`.errors` (exception translation)
and :mod:`.library` (the one import of kafka-python).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from pipeline.bus import Record, TopicSpec
from pipeline.bus.kafka.admin import COMPACTED_TOPIC_CONFIGS, ClusterAdmin
from pipeline.bus.kafka.connection import MAX_MESSAGE_BYTES, MAX_REQUEST_SIZE, Connection, KafkaTimeouts
from pipeline.bus.kafka.consumer import (
    FETCH_MAX_BYTES,
    JOIN_POLL_S,
    KEEPALIVE_POLL_MS,
    KafkaConsumerAdapter,
    new_consumer,
)
from pipeline.bus.kafka.errors import Translator
from pipeline.bus.kafka.producer import PRODUCER_CLOSE_TIMEOUT_S, KafkaProducerAdapter, new_producer
from pipeline.config.settings import KafkaSettings

__all__ = [
    "COMPACTED_TOPIC_CONFIGS",
    "FETCH_MAX_BYTES",
    "JOIN_POLL_S",
    "KEEPALIVE_POLL_MS",
    "MAX_MESSAGE_BYTES",
    "MAX_REQUEST_SIZE",
    "PRODUCER_CLOSE_TIMEOUT_S",
    "KafkaBus",
    "KafkaConsumerAdapter",
    "KafkaProducerAdapter",
    "KafkaTimeouts",
]


class KafkaBus:
    """Topics, producers and consumer-group consumers on one Kafka cluster."""

    def __init__(
        self,
        settings: KafkaSettings,
        client_id: str = "embedstream",
        *,
        timeouts: KafkaTimeouts | None = None,
        max_message_bytes: int = MAX_REQUEST_SIZE,
    ) -> None:
        """``max_message_bytes`` bounds every message: produced, fetched, and in topics."""
        self._timeouts = timeouts or KafkaTimeouts()
        self._max_message_bytes = max_message_bytes
        self._connection = Connection(settings, client_id, self._timeouts)
        self._translated = Translator(settings)
        self._cluster = ClusterAdmin(self._connection, self._translated, max_message_bytes)

    def producer(self) -> KafkaProducerAdapter:
        return KafkaProducerAdapter(
            functools.partial(new_producer, self._connection, self._max_message_bytes),
            self._timeouts.delivery_ms / 1000 + 5,
            self._translated,
        )

    def consumer(self, group: str, topics: Sequence[str]) -> KafkaConsumerAdapter:
        keepalive_s = min(1.0, self._timeouts.max_poll_interval_ms / 3000)
        return KafkaConsumerAdapter(
            functools.partial(new_consumer, self._connection, group, self._max_message_bytes),
            group,
            topics,
            keepalive_s,
            self._timeouts.probe_ms,
            self._translated,
        )

    def ensure_topics(self, specs: Sequence[TopicSpec]) -> None:
        """Create missing topics; raise ``max.message.bytes`` of existing ones if lower.

        Nothing else about an existing topic changes (idempotent): a topic made by an
        older version or by hand keeps its partitions and cleanup policy, but must accept
        every message this bus may write, or a large event would fail forever.
        """
        self._cluster.ensure_topics(specs)

    def delete_topics(self, names: Sequence[str]) -> None:
        """Delete topics (tests clean up with this); missing ones are ignored."""
        self._cluster.delete_topics(names)

    def list_topics(self) -> list[str]:
        return self._cluster.list_topics()

    def read_all(self, topic: str) -> list[Record]:
        """Every record ``topic`` holds now, partition by partition, without a consumer group
        (a small compacted table read whole: no join, no offsets left behind)."""
        return self._cluster.read_all(topic)

    def group_lag(self, group: str, topics: Sequence[str]) -> dict[tuple[str, int], int]:
        """Records of ``topics`` that ``group`` has not committed, per partition, seen from
        outside the group (joining it would rebalance its workers). A partition the group
        never committed counts from the start of its log, as a new member would read it."""
        return self._cluster.group_lag(group, topics)

    def close(self) -> None:
        self._cluster.close()
