"""In-process bus: the embedded default's transport and the tests' fake broker.

Same semantics the stages rely on from Kafka: per-key order within a partition, offsets
committed per consumer group, uncommitted records redelivered to the next consumer.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict
from collections.abc import Sequence

from pipeline.bus import Outgoing, Record, TopicSpec, next_offsets, partition_for


class InMemoryBus:
    def __init__(self, default_partitions: int = 1) -> None:
        self._default_partitions = default_partitions
        self._logs: dict[str, list[list[Record]]] = {}
        self._committed: dict[str, dict[tuple[str, int], int]] = defaultdict(dict)
        # Offset of each partition's first retained record: trim() drops consumed records.
        self._base: dict[tuple[str, int], int] = defaultdict(int)
        self._readers: dict[str, set[str]] = defaultdict(set)  # topic -> groups reading it
        self._changed = threading.Condition()

    def ensure_topics(self, specs: Sequence[TopicSpec]) -> None:
        with self._changed:
            for spec in specs:
                self._logs.setdefault(spec.name, [[] for _ in range(spec.partitions)])

    def producer(self) -> InMemoryProducer:
        return InMemoryProducer(self)

    def consumer(self, group: str, topics: Sequence[str]) -> InMemoryConsumer:
        with self._changed:
            for topic in topics:
                self._readers[topic].add(group)
        return InMemoryConsumer(self, group, topics)

    def append(self, message: Outgoing) -> None:
        with self._changed:
            partitions = self._logs.setdefault(message.topic, [[] for _ in range(self._default_partitions)])
            partition = partition_for(message.key, len(partitions))
            log = partitions[partition]
            log.append(
                Record(
                    message.topic,
                    partition,
                    self._base[(message.topic, partition)] + len(log),
                    message.key,
                    message.value,
                    message.headers,
                    int(time.time() * 1000),
                )
            )
            self._changed.notify_all()

    def trim(self) -> None:
        """Forget records every reading group has committed, so a long ``watch`` stays small.

        Topics nobody reads (the DLQ) are kept whole: they are there to be inspected.
        """
        with self._changed:
            for topic, groups in self._readers.items():
                for partition, log in enumerate(self._logs.get(topic, [])):
                    tp = (topic, partition)
                    done = min(self._committed[g].get(tp, 0) for g in groups)
                    del log[: max(0, done - self._base[tp])]
                    self._base[tp] = max(self._base[tp], done)

    def records(self, topic: str) -> list[Record]:
        """Every retained record of ``topic`` (the DLQ and tests)."""
        with self._changed:
            return [r for log in self._logs.get(topic, []) for r in log]

    def fetch(self, group: str, topics: Sequence[str], max_records: int, timeout_s: float) -> list[Record]:
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                batch = self._pending(group, topics, max_records)
                remaining = deadline - time.monotonic()
                if batch or remaining <= 0:
                    return batch
                self._changed.wait(remaining)

    def _pending(self, group: str, topics: Sequence[str], max_records: int) -> list[Record]:
        batch: list[Record] = []
        positions = self._committed[group]
        for topic in topics:
            for partition, log in enumerate(self._logs.get(topic, [])):
                start = max(0, positions.get((topic, partition), 0) - self._base[(topic, partition)])
                batch.extend(log[start : start + max_records - len(batch)])
                if len(batch) >= max_records:
                    return batch
        return batch

    def commit(self, group: str, records: Sequence[Record]) -> None:
        with self._changed:
            self._committed[group].update(next_offsets(records))

    def read_all(self, topic: str) -> list[Record]:
        """What :meth:`pipeline.bus.kafka.KafkaBus.read_all` answers: the whole retained log."""
        return self.records(topic)

    def group_lag(self, group: str, topics: Sequence[str]) -> dict[tuple[str, int], int]:
        """What :meth:`pipeline.bus.kafka.KafkaBus.group_lag` answers: ``group``'s lag from outside."""
        return self.lag(group, topics)

    def lag(self, group: str, topics: Sequence[str]) -> dict[tuple[str, int], int]:
        with self._changed:
            return {
                (topic, p): self._base[(topic, p)] + len(log) - self._committed[group].get((topic, p), 0)
                for topic in topics
                for p, log in enumerate(self._logs.get(topic, []))
            }


class InMemoryProducer:
    def __init__(self, bus: InMemoryBus) -> None:
        self._bus = bus

    def send(self, messages: Sequence[Outgoing]) -> None:
        for message in messages:
            self._bus.append(message)

    def close(self) -> None:
        pass


class InMemoryConsumer:
    """Delivers from the group's committed position; uncommitted work is redelivered."""

    def __init__(self, bus: InMemoryBus, group: str, topics: Sequence[str]) -> None:
        self._bus = bus
        self._group = group
        self._topics = list(topics)

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        return self._bus.fetch(self._group, self._topics, max_records, timeout_s)

    def commit(self, records: Sequence[Record]) -> None:
        self._bus.commit(self._group, records)

    def lag(self) -> dict[tuple[str, int], int]:
        return self._bus.lag(self._group, self._topics)

    def processing(self) -> contextlib.AbstractContextManager[None]:
        # Nothing to keep alive: an in-process group never evicts a slow member.
        return contextlib.nullcontext()

    def close(self) -> None:
        pass
