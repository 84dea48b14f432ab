"""The consumer-group member: polls, explicit commits, membership kept through slow batches and rebalances."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pipeline.bus import Record, next_offsets
from pipeline.bus.kafka.connection import Connection
from pipeline.bus.kafka.errors import Translator
from pipeline.bus.kafka.library import (
    ConsumerRebalanceListener,
    KafkaConsumer,
    OffsetAndMetadata,
    TopicPartition,
)
from pipeline.core.errors import CommitLost

log = logging.getLogger(__name__)

#: kafka-python's default bound on one fetch response; raised only for larger messages.
FETCH_MAX_BYTES = 52_428_800
#: How long a poll waits while the member has no partitions (joining or rebalancing).
JOIN_POLL_S = 5.0
#: How long each keep-alive poll waits; also the most it adds to a long batch on exit.
KEEPALIVE_POLL_MS = 200


def new_consumer(connection: Connection, group: str, max_message_bytes: int) -> Any:
    """A kafka-python member of ``group`` that commits only what it is told to."""
    settings, timeouts = connection.settings, connection.timeouts
    return connection.build(
        KafkaConsumer,
        group_id=group,
        enable_auto_commit=False,  # commit only what the worker finished
        auto_offset_reset="earliest",  # a new group starts from the beginning of the log
        max_poll_records=settings.batch_max_records,
        fetch_max_wait_ms=settings.batch_max_wait_ms,
        session_timeout_ms=timeouts.session_ms,
        heartbeat_interval_ms=timeouts.heartbeat_ms,
        max_poll_interval_ms=timeouts.max_poll_interval_ms,
        # Any message the producers may write must fit one partition fetch.
        max_partition_fetch_bytes=max_message_bytes,
        fetch_max_bytes=max(FETCH_MAX_BYTES, max_message_bytes),
    )


class KafkaConsumerAdapter:
    """One consumer-group member; offsets move only through :meth:`commit`.

    kafka-python consumers are not thread-safe; every use of the client happens under
    ``self._lock`` so the keep-alive thread of :meth:`processing` cannot interleave.
    """

    def __init__(
        self,
        factory: Callable[[], Any],
        group: str,
        topics: Sequence[str],
        keepalive_s: float,
        probe_ms: int,
        translated: Translator,
    ) -> None:
        self._factory = factory
        self._group = group
        self._topics = list(topics)
        self._keepalive_s = keepalive_s
        self._probe_ms = probe_ms
        self._translated = translated
        self._lock = threading.RLock()
        self._consumer: Any = None

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        with self._lock, self._translated("poll"):
            consumer = self._client()
            if not consumer.assignment():
                # Joining (or rebalancing: eager assignors revoke everything first).
                # kafka-python 3.0.12 drops a JoinGroup answer that arrives between two
                # polls and sends a new one, so short polls can rebalance forever; give
                # the join room to complete inside this call.
                timeout_s = max(timeout_s, JOIN_POLL_S)
            batches = consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        # Partition order, then offset order within each: the order Kafka guarantees.
        return [to_record(raw) for tp in sorted(batches) for raw in batches[tp]]

    def commit(self, records: Sequence[Record]) -> None:
        offsets = next_offsets(records)
        if not offsets:
            return
        with self._lock, self._translated("commit"):
            consumer = self._client()
            assigned = {(tp.topic, tp.partition) for tp in consumer.assignment()}
            lost = sorted(set(offsets) - assigned)
            owned = {
                TopicPartition(*tp): OffsetAndMetadata(offset, "", -1)
                for tp, offset in offsets.items()
                if tp in assigned
            }
            # The new owner's position is authoritative for partitions that moved; ours
            # would be at best redundant and at worst move its committed offset backwards.
            if owned:
                consumer.commit(owned)
        if lost:
            raise CommitLost(f"partitions {lost} were reassigned before the commit")

    def lag(self) -> dict[tuple[str, int], int]:
        with self._lock, self._translated("lag"):
            consumer = self._client()
            assigned = sorted(consumer.assignment())
            if not assigned:
                return {}
            ends = consumer.end_offsets(assigned, timeout_ms=self._probe_ms)
            starts = consumer.beginning_offsets(assigned, timeout_ms=self._probe_ms)
            return {
                (tp.topic, tp.partition): ends[tp] - _committed(consumer, tp, starts[tp], self._probe_ms)
                for tp in assigned
            }

    @contextlib.contextmanager
    def processing(self) -> Iterator[None]:
        """Pause fetching and keep polling in the background while the caller works.

        kafka-python leaves the group when ``poll`` is not called for
        ``max_poll_interval_ms``; heartbeats alone do not prove the loop is alive. With
        every partition paused, a background ``poll`` proves liveness (and completes a
        rebalance if one starts) without fetching records the caller has not asked for.
        """
        if self._consumer is None:  # never polled: nothing to keep alive
            yield
            return
        keeper = _KeepAlive(self._consumer, self._lock, self._keepalive_s, self._group)
        with self._lock:
            keeper.pause_assigned()
        keeper.start()
        try:
            yield
        finally:
            keeper.stop()
            with self._lock:  # local state only: cannot fail on the network
                paused = self._consumer.paused()
                if paused:
                    self._consumer.resume(*paused)

    def close(self) -> None:
        with self._lock:
            if self._consumer is not None:
                # Leaves the group at once, so the partitions move without waiting for
                # the session timeout; nothing is auto-committed.
                with self._translated("close consumer"):
                    self._consumer.close(autocommit=False)
                self._consumer = None

    def _client(self) -> Any:
        if self._consumer is None:
            consumer = self._factory()
            consumer.subscribe(self._topics, listener=_RebalanceLogger(self._group))
            self._consumer = consumer
        return self._consumer


def to_record(raw: Any) -> Record:
    """A kafka-python consumer record as the port's :class:`Record`."""
    return Record(
        topic=raw.topic,
        partition=raw.partition,
        offset=raw.offset,
        # Never raises: undecodable bytes become lone surrogates the stages can reject,
        # and encode back to the same bytes (e.g. into the DLQ).
        key=raw.key.decode("utf-8", "surrogateescape") if raw.key is not None else None,
        value=raw.value,
        headers=tuple((name, bytes(value)) for name, value in raw.headers or ()),
        timestamp_ms=raw.timestamp,
    )


def _committed(consumer: Any, tp: Any, log_start: int, timeout_ms: int) -> int:
    # Nothing committed yet means the whole log is still to do (as a new owner would see
    # it with auto_offset_reset=earliest), not just what this member has not fetched.
    committed = consumer.committed(tp, timeout_ms=timeout_ms)
    return int(committed) if committed is not None else int(log_start)


class _KeepAlive(threading.Thread):
    """Polls a fully paused consumer until stopped, once the batch has run ``interval_s``.

    Why the polls are back to back and each waits ``KEEPALIVE_POLL_MS`` instead of a
    ``poll(timeout_ms=0)`` per second: kafka-python 3.0.12 discards a JoinGroup/SyncGroup
    that completes *between* two polls and sends a fresh JoinGroup on the next one, which
    starts another rebalance; spaced zero-timeout polls therefore rebalance forever once
    the group starts one. A poll that waits lets the join complete inside the call.
    Batches shorter than ``interval_s`` never poll at all.
    """

    def __init__(self, consumer: Any, lock: threading.RLock, interval_s: float, group: str) -> None:
        super().__init__(name=f"kafka-keepalive-{group}", daemon=True)
        self._consumer = consumer
        self._lock = lock
        self._interval_s = interval_s
        self._stopped = threading.Event()

    def run(self) -> None:
        if self._stopped.wait(self._interval_s):
            return
        failures = 0
        while not self._stopped.is_set():
            try:
                with self._lock:
                    self._tick()
            except Exception:
                # Never kill the keep-alive over a failed poll (broker restarting): the next
                # tick retries, and a lost membership surfaces at commit time as CommitLost.
                failures += 1
                level = logging.WARNING if failures == 1 else logging.DEBUG  # once, not every second
                log.log(level, "keep-alive poll failed", exc_info=True)
                self._stopped.wait(self._interval_s)

    def stop(self) -> None:
        self._stopped.set()
        self.join()

    def pause_assigned(self) -> None:
        assigned = self._consumer.assignment()
        if assigned:
            self._consumer.pause(*assigned)

    def _tick(self) -> None:
        returned = self._consumer.poll(timeout_ms=KEEPALIVE_POLL_MS)
        # Records only come back when a rebalance handed us new, unpaused partitions;
        # rewind them so the caller's next poll sees them, and pause again.
        for tp, raws in returned.items():
            self._consumer.seek(tp, raws[0].offset)
        self.pause_assigned()


class _RebalanceLogger(ConsumerRebalanceListener):  # type: ignore[misc]  # kafka is untyped
    """Logs partition movements; runs on kafka-python's IO thread, so it must not block."""

    def __init__(self, group: str) -> None:
        self._group = group

    def on_partitions_revoked(self, revoked: Any) -> None:
        log.info("group %s: partitions revoked: %s", self._group, _names(revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("group %s: partitions assigned: %s", self._group, _names(assigned))

    def on_partitions_lost(self, lost: Any) -> None:
        log.warning("group %s: partitions lost (evicted from the group): %s", self._group, _names(lost))


def _names(partitions: Any) -> list[str]:
    return sorted(f"{tp.topic}[{tp.partition}]" for tp in partitions)
