"""Unit tests for the in-process bus: ordering, group offsets, lag and next_offsets."""

from __future__ import annotations

from collections import defaultdict

from pipeline.bus import Outgoing, Record, TopicSpec, next_offsets, partition_for
from pipeline.bus.memory import InMemoryBus

T = "topic"


def fill(bus: InMemoryBus, count: int, keys: int = 5, topic: str = T) -> None:
    bus.producer().send([Outgoing(topic, f"key{i % keys}", f"{i}".encode()) for i in range(count)])


def drain(bus: InMemoryBus, group: str, topics: list[str], batch: int = 7) -> list[Record]:
    consumer = bus.consumer(group, topics)
    out: list[Record] = []
    for _ in range(1000):  # bounded: a bus that never advances fails instead of hanging
        records = consumer.poll(batch, 0.0)
        if not records:
            return out
        out.extend(records)
        consumer.commit(records)
    raise AssertionError("the consumer never drained the topic")


def test_per_key_order_within_one_partition() -> None:
    """All records of a key land in one partition, in send order, at increasing offsets."""
    bus = InMemoryBus(default_partitions=4)
    fill(bus, 100, keys=7)
    records = drain(bus, "g", [T])
    assert len(records) == 100
    by_key: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        assert record.key is not None
        by_key[record.key].append(record)
    partitions_used = set()
    for key, recs in by_key.items():
        assert {r.partition for r in recs} == {partition_for(key, 4)}
        values = [int(r.value or b"") for r in recs]
        assert values == sorted(values)
        offsets = [r.offset for r in recs]
        assert offsets == sorted(offsets)
        partitions_used.add(recs[0].partition)
    assert len(partitions_used) > 1


def test_partition_for_is_stable_and_in_range() -> None:
    """partition_for is a pure function of key and count and stays within range."""
    for i in range(50):
        p = partition_for(f"doc-{i}", 6)
        assert 0 <= p < 6
        assert p == partition_for(f"doc-{i}", 6)


def test_every_key_a_kafka_producer_can_write_has_a_partition() -> None:
    """Keys polled as undecodable bytes, and lone surrogates (written by the Kafka adapter
    as their code unit), are routed like any key: the in-process bus takes what Kafka takes."""
    bus = InMemoryBus()
    bus.ensure_topics([TopicSpec(T, 4)])
    keys = ["plain", "bytes-\udcff", "lone-\ud800"]
    bus.producer().send([Outgoing(T, key, b"v") for key in keys])
    assert sorted(r.key for r in drain(bus, "g", [T])) == sorted(keys)


def test_uncommitted_records_are_redelivered_committed_are_not() -> None:
    """A poll without commit is repeated by the next poll; after commit the next records follow."""
    bus = InMemoryBus()
    fill(bus, 10)
    consumer = bus.consumer("g", [T])
    first = consumer.poll(4, 0.0)
    assert [r.offset for r in first] == [0, 1, 2, 3]
    assert consumer.poll(4, 0.0) == first
    # A fresh consumer of the same group also starts from the committed position.
    assert bus.consumer("g", [T]).poll(4, 0.0) == first
    consumer.commit(first)
    second = consumer.poll(4, 0.0)
    assert [r.offset for r in second] == [4, 5, 6, 7]
    assert bus.consumer("g", [T]).poll(100, 0.0) == consumer.poll(100, 0.0)
    consumer.commit(consumer.poll(100, 0.0))
    assert consumer.poll(100, 0.0) == []


def test_groups_are_independent() -> None:
    """Committing in one group does not move another group's position."""
    bus = InMemoryBus(default_partitions=2)
    fill(bus, 12)
    a = drain(bus, "a", [T])
    assert len(a) == 12
    b = bus.consumer("b", [T]).poll(100, 0.0)
    assert len(b) == 12
    assert sorted(a, key=lambda r: (r.partition, r.offset)) == sorted(
        b, key=lambda r: (r.partition, r.offset)
    )
    assert sum(bus.lag("a", [T]).values()) == 0
    assert sum(bus.lag("b", [T]).values()) == 12


def test_lag_counts_uncommitted_records_per_partition() -> None:
    """Lag per partition is log length minus the group's committed offset."""
    bus = InMemoryBus()
    bus.ensure_topics([TopicSpec(T, 3)])
    fill(bus, 30, keys=9)
    consumer = bus.consumer("g", [T])
    sizes = {(T, p): 0 for p in range(3)}
    for record in bus.records(T):
        sizes[(T, record.partition)] += 1
    assert consumer.lag() == sizes
    batch = consumer.poll(5, 0.0)
    consumer.commit(batch)
    expected = dict(sizes)
    for record in batch:
        expected[(record.topic, record.partition)] -= 1
    assert consumer.lag() == expected
    assert sum(consumer.lag().values()) == 25
    fill(bus, 3, keys=1)
    assert sum(consumer.lag().values()) == 28


def test_poll_respects_max_records_and_reads_all_topics() -> None:
    """A poll returns at most max_records, taken across every subscribed topic."""
    bus = InMemoryBus(default_partitions=2)
    fill(bus, 5, topic="t1")
    fill(bus, 5, topic="t2")
    consumer = bus.consumer("g", ["t1", "t2"])
    assert len(consumer.poll(3, 0.0)) == 3
    records = drain(bus, "g", ["t1", "t2"], batch=3)
    assert sorted((r.topic, int(r.value or b"")) for r in records) == sorted(
        [("t1", i) for i in range(5)] + [("t2", i) for i in range(5)]
    )


def test_poll_on_empty_topic_returns_empty_list_after_timeout() -> None:
    """Polling a topic with nothing pending returns [] once the timeout passes."""
    bus = InMemoryBus()
    assert bus.consumer("g", ["nothing"]).poll(10, 0.01) == []


def test_tombstone_values_are_kept() -> None:
    """A None value is stored and delivered as None (compaction tombstone)."""
    bus = InMemoryBus()
    bus.producer().send([Outgoing(T, "k", None, (("h", b"1"),))])
    (record,) = bus.consumer("g", [T]).poll(1, 0.0)
    assert record.value is None
    assert record.headers == (("h", b"1"),)


def test_next_offsets_picks_max_plus_one_per_partition() -> None:
    """next_offsets commits one past the highest offset seen per (topic, partition), in any order."""
    records = [
        Record("a", 0, 5, "k", b""),
        Record("a", 0, 2, "k", b""),
        Record("a", 1, 0, "k", b""),
        Record("b", 0, 9, "k", b""),
        Record("a", 0, 7, "k", b""),
    ]
    assert next_offsets(records) == {("a", 0): 8, ("a", 1): 1, ("b", 0): 10}
    assert next_offsets([]) == {}


def test_trim_drops_only_what_every_reading_group_committed():
    """trim() forgets consumed records, keeps offsets monotonic, and keeps unread topics whole."""
    from pipeline.bus import Outgoing
    from pipeline.bus.memory import InMemoryBus

    bus = InMemoryBus()
    fast, slow = bus.consumer("fast", ["t"]), bus.consumer("slow", ["t"])
    producer = bus.producer()
    producer.send([Outgoing("t", "k", str(i).encode()) for i in range(4)])
    producer.send([Outgoing("dlq", "k", b"bad")])
    fast.commit(fast.poll(10, 0))
    slow.commit(slow.poll(2, 0))
    bus.trim()
    assert [r.offset for r in bus.records("t")] == [2, 3]
    assert [r.offset for r in slow.poll(10, 0)] == [2, 3]
    assert fast.poll(10, 0) == []
    producer.send([Outgoing("t", "k", b"4")])
    assert [r.offset for r in fast.poll(10, 0)] == [4]
    assert slow.lag() == {("t", 0): 3}
    assert len(bus.records("dlq")) == 1
