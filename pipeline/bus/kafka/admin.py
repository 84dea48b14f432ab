"""The cluster seen from outside any group: topics created, resized and deleted, whole reads, group lag."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from pipeline.bus import Record, TopicSpec
from pipeline.bus.kafka.connection import MAX_MESSAGE_BYTES, Connection
from pipeline.bus.kafka.consumer import to_record
from pipeline.bus.kafka.errors import Translator, raise_translated
from pipeline.bus.kafka.library import (
    ConfigResource,
    ConfigResourceType,
    KafkaAdminClient,
    KafkaConsumer,
    TopicPartition,
    kafka_errors,
)
from pipeline.core.errors import BusUnavailable, FatalError

log = logging.getLogger(__name__)

#: Compacted topics keep the latest value per key; the cleaner runs early (dirty ratio
#: 10 %, 10-minute segments) so tombstones and superseded document versions do not pile
#: up in small, slowly growing topics.
COMPACTED_TOPIC_CONFIGS = {
    "cleanup.policy": "compact",
    "min.cleanable.dirty.ratio": "0.1",
    "segment.ms": "600000",
}
#: Topic config: replicas that must hold a write before an acks=all produce succeeds.
MIN_INSYNC_REPLICAS = "min.insync.replicas"
#: Error codes in admin responses that mean "already as requested".
_TOPIC_ALREADY_EXISTS = kafka_errors.TopicAlreadyExistsError.errno
_UNKNOWN_TOPIC = kafka_errors.UnknownTopicOrPartitionError.errno


class ClusterAdmin:
    """What :class:`KafkaBus` does without joining a group, on one lazily built admin client."""

    def __init__(self, connection: Connection, translated: Translator, max_message_bytes: int) -> None:
        self._connection = connection
        self._timeouts = connection.timeouts
        self._translated = translated
        self._max_message_bytes = max_message_bytes
        self._admin_client: Any = None

    def ensure_topics(self, specs: Sequence[TopicSpec]) -> None:
        if not specs:
            return
        request = {spec.name: self._topic_options(spec) for spec in specs}
        with self._translated("create topics"):
            admin = self._admin()
            response = admin.create_topics(request, raise_errors=False)
            existing = _check_topic_errors(response, ignore=_TOPIC_ALREADY_EXISTS)
            # KRaft acknowledges a create before every partition has a leader; producing
            # right away would then wait on metadata, so wait here where it is expected.
            admin.wait_for_topics(list(request), timeout_ms=self._timeouts.request_ms)
            if existing:
                self._raise_message_limit(admin, existing)

    def delete_topics(self, names: Sequence[str]) -> None:
        if not names:
            return
        with self._translated("delete topics"):
            response = self._admin().delete_topics(list(names), raise_errors=False)
            _check_topic_errors(response, ignore=_UNKNOWN_TOPIC)

    def list_topics(self) -> list[str]:
        with self._translated("list topics"):
            return sorted(self._admin().list_topics())

    def read_all(self, topic: str) -> list[Record]:
        with self._translated(f"read {topic}"):
            consumer = self._connection.build(KafkaConsumer, enable_auto_commit=False)
            try:
                partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
                consumer.assign(partitions)
                consumer.seek_to_beginning(*partitions)
                ends = consumer.end_offsets(partitions)
                found: list[Record] = []
                deadline = time.monotonic() + self._timeouts.request_ms / 1000
                while any(consumer.position(tp) < ends[tp] for tp in partitions):
                    if time.monotonic() > deadline:
                        raise BusUnavailable(f"{topic} could not be read to its end in time")
                    batches = consumer.poll(timeout_ms=500)
                    found.extend(to_record(raw) for tp in sorted(batches) for raw in batches[tp])
                return found
            finally:
                consumer.close()

    def group_lag(self, group: str, topics: Sequence[str]) -> dict[tuple[str, int], int]:
        with self._translated("group lag"):
            found = self._group_offsets(group)
            committed = {(tp.topic, tp.partition): meta.offset for tp, meta in found.items()}
            consumer = self._connection.build(KafkaConsumer, enable_auto_commit=False)
            try:
                partitions = [
                    TopicPartition(topic, p)
                    for topic in topics
                    for p in consumer.partitions_for_topic(topic) or ()
                ]
                ends = consumer.end_offsets(partitions)
                starts = consumer.beginning_offsets(partitions)
            finally:
                consumer.close()
        lag = {}
        for tp in partitions:
            done = committed.get((tp.topic, tp.partition), -1)
            lag[(tp.topic, tp.partition)] = ends[tp] - max(done, starts[tp])
        return lag

    def close(self) -> None:
        if self._admin_client is not None:
            with contextlib.suppress(Exception):  # best effort: nothing to recover on close
                self._admin_client.close()
            self._admin_client = None

    def _group_offsets(self, group: str) -> dict[Any, Any]:
        """Committed offsets of ``group``. The first group lookup on a fresh cluster answers
        "coordinator not available" while the broker creates its offsets topic: ask again."""
        deadline = time.monotonic() + self._timeouts.request_ms / 1000
        while True:
            try:
                return dict(self._admin().list_group_offsets({group: None}).get(group, {}))
            except (kafka_errors.CoordinatorNotAvailableError, kafka_errors.CoordinatorLoadInProgressError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def _topic_options(self, spec: TopicSpec) -> dict[str, Any]:
        configs = {MAX_MESSAGE_BYTES: str(self._max_message_bytes)}
        if spec.min_insync_replicas is not None:
            configs[MIN_INSYNC_REPLICAS] = str(spec.min_insync_replicas)
        return {
            "num_partitions": spec.partitions,
            "replication_factor": spec.replication,
            "configs": configs | (COMPACTED_TOPIC_CONFIGS if spec.compacted else {}),
        }

    def _raise_message_limit(self, admin: Any, topics: Sequence[str]) -> None:
        wanted = str(self._max_message_bytes)
        current = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name, [MAX_MESSAGE_BYTES]) for name in topics],
            config_filter="all",  # the broker default counts too: it is what applies
        ).get("topic", {})
        low = [name for name in topics if _message_limit(current.get(name, {})) < self._max_message_bytes]
        if not low:
            return
        results = admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name, {MAX_MESSAGE_BYTES: wanted}) for name in low],
            raise_on_unknown=False,
            incremental=True,  # only this key changes; the topic's other settings stay
        ).get("topic", {})
        failed = {name: result for name, result in results.items() if result != "OK"}
        if failed:
            raise FatalError(
                f"topics {sorted(failed)} accept smaller messages than max_message_bytes={wanted} "
                f"and raising their {MAX_MESSAGE_BYTES} failed ({next(iter(failed.values()))}); "
                "raise it with kafka-configs.sh --alter, or grant this user AlterConfigs"
            )
        log.info("raised %s of %s to %s", MAX_MESSAGE_BYTES, low, wanted)

    def _admin(self) -> Any:
        if self._admin_client is None:
            self._admin_client = self._connection.build(KafkaAdminClient)
        return self._admin_client


def _message_limit(configs: dict[str, Any]) -> int:
    value = configs.get(MAX_MESSAGE_BYTES, {}).get("value")
    return int(value) if value is not None else 0


def _check_topic_errors(response: dict[str, Any], ignore: int) -> list[str]:
    """Raise the first real error of a topics response; return the topics with ``ignore``."""
    ignored = []
    for topic in response.get("topics", []):
        code = topic.get("error_code", 0)
        if code == ignore:
            ignored.append(str(topic.get("name")))
        elif code != 0:
            error = kafka_errors.for_code(code)(topic.get("error_message") or topic.get("name"))
            raise_translated(f"topic {topic.get('name')}", error)
    return ignored
