"""Kafka-only behaviour of the bus: group membership under slow batches, failures, topics."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType

from pipeline.bus import Consumer, Outgoing, Record, TopicSpec
from pipeline.bus.kafka import KafkaBus, KafkaTimeouts
from pipeline.config.settings import KafkaSettings
from pipeline.core.errors import BusUnavailable, CommitLost, MessageTooLarge
from pipeline.observability import NullObserver
from pipeline.stages.worker import Worker

pytestmark = pytest.mark.kafka

PollUntil = Callable[[Consumer, Callable[[list[Record]], bool]], list[Record]]

#: A 4 s poll interval makes "a batch slower than max_poll_interval_ms" cheap to stage.
#: kafka-python 3 does not require session_timeout_ms <= max_poll_interval_ms (nor
#: request_timeout_ms > session_timeout_ms, as 2.x did), and 6 s is the broker's minimum
#: session timeout, so the session stays longer than the poll interval here.
IMPATIENT = KafkaTimeouts(
    request_ms=10_000,
    bootstrap_ms=10_000,
    delivery_ms=15_000,
    session_ms=6_000,
    heartbeat_ms=1_000,
    max_poll_interval_ms=4_000,
)
SLOWER_THAN_POLL_INTERVAL_S = 10


@pytest.fixture
def slow_bus(kafka_settings: KafkaSettings) -> Iterator[KafkaBus]:
    bus = KafkaBus(kafka_settings, client_id="embedstream-test", timeouts=IMPATIENT)
    yield bus
    bus.close()


def make_topic(bus: KafkaBus, settings: KafkaSettings, name: str, partitions: int = 3) -> str:
    topic = f"{settings.topic_prefix}.{name}"
    bus.ensure_topics([TopicSpec(topic, partitions)])
    return topic


def send(bus: KafkaBus, messages: Sequence[Outgoing]) -> None:
    producer = bus.producer()
    try:
        producer.send(messages)
    finally:
        producer.close()


def at_least(count: int) -> Callable[[list[Record]], bool]:
    return lambda received: len(received) >= count


def positions(records: Sequence[Record]) -> set[tuple[int, int]]:
    return {(r.partition, r.offset) for r in records}


def five_polled_records(
    bus: KafkaBus, settings: KafkaSettings, poll_until: PollUntil
) -> tuple[str, str, Consumer, list[Record]]:
    """A topic with five records, and a group member that has polled them all."""
    events = make_topic(bus, settings, "events")
    group = f"{settings.topic_prefix}.slow"
    send(bus, [Outgoing(events, f"k{i}", b"old") for i in range(5)])
    worker = bus.consumer(group, [events])
    return events, group, worker, poll_until(worker, at_least(5))


def test_long_batch_inside_processing_keeps_its_partitions(
    slow_bus: KafkaBus, kafka_settings: KafkaSettings, poll_until: PollUntil
):
    """A batch slower than max_poll_interval_ms inside processing() still commits, once."""
    events, group, worker, batch = five_polled_records(slow_bus, kafka_settings, poll_until)

    with worker.processing():
        time.sleep(SLOWER_THAN_POLL_INTERVAL_S)
    worker.commit(batch)  # no CommitLost: the group kept us
    worker.close()

    send(slow_bus, [Outgoing(events, "marker", b"new")])
    successor = slow_bus.consumer(group, [events])
    try:
        assert [r.value for r in poll_until(successor, at_least(1))] == [b"new"]
    finally:
        successor.close()


def test_long_batch_without_processing_loses_its_commit(
    slow_bus: KafkaBus, kafka_settings: KafkaSettings, poll_until: PollUntil
):
    """Without processing() the same slow batch gets the worker evicted and redelivered."""
    events, group, worker, batch = five_polled_records(slow_bus, kafka_settings, poll_until)

    time.sleep(SLOWER_THAN_POLL_INTERVAL_S)
    with pytest.raises(CommitLost):
        worker.commit(batch)
    worker.close()

    successor = slow_bus.consumer(group, [events])
    try:
        assert positions(poll_until(successor, at_least(5))) == positions(batch)
    finally:
        successor.close()


class SlowCopy:
    """A stage slower than the test's max_poll_interval_ms."""

    name = "slow"

    def __init__(self, out: str, seconds: float) -> None:
        self.out = out
        self.seconds = seconds

    def handle(self, records: Sequence[Record]) -> list[Outgoing]:
        time.sleep(self.seconds)
        return [Outgoing(self.out, r.key or "", r.value) for r in records]


class WithoutKeepAlive:
    """The adapter with processing() disabled, as if the worker did not use it."""

    def __init__(self, consumer: Consumer) -> None:
        self._consumer = consumer

    def processing(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def __getattr__(self, name: str) -> object:
        return getattr(self._consumer, name)


class ErrorLog(NullObserver):
    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []

    def error(self, stage: str, kind: str) -> None:
        self.errors.append((stage, kind))


def test_worker_carries_on_after_a_lost_commit(
    slow_bus: KafkaBus, kafka_settings: KafkaSettings, poll_until: PollUntil
):
    """An evicted worker counts the lost commit and keeps running; the batch is redelivered."""
    events = make_topic(slow_bus, kafka_settings, "events")
    out = make_topic(slow_bus, kafka_settings, "out")
    group = f"{kafka_settings.topic_prefix}.slow"
    send(slow_bus, [Outgoing(events, f"k{i}", b"v") for i in range(5)])
    consumer, producer, observer = slow_bus.consumer(group, [events]), slow_bus.producer(), ErrorLog()
    worker = Worker(WithoutKeepAlive(consumer), producer, SlowCopy(out, seconds=7), observer)

    try:
        deadline = time.monotonic() + 20
        while (handled := worker.run_batch()) == 0 and time.monotonic() < deadline:
            pass
    finally:
        consumer.close()
        producer.close()

    assert handled == 5
    assert observer.errors == [("slow", "commit_lost")]
    successor = slow_bus.consumer(group, [events])
    try:
        assert len(poll_until(successor, at_least(5))) == 5  # redelivered: the commit was lost
    finally:
        successor.close()


def test_rebalance_during_processing_settles_and_loses_nothing(
    slow_bus: KafkaBus,
    kafka_settings: KafkaSettings,
    poll_until: PollUntil,
    caplog: pytest.LogCaptureFixture,
):
    """A member joining mid-batch causes one rebalance, not a loop, and every record is consumed."""
    caplog.set_level(logging.INFO, logger="pipeline.bus.kafka")
    events = make_topic(slow_bus, kafka_settings, "events")
    group = f"{kafka_settings.topic_prefix}.pair"
    send(slow_bus, [Outgoing(events, f"k{i}", b"v") for i in range(60)])
    first, second = slow_bus.consumer(group, [events]), slow_bus.consumer(group, [events])
    seen: list[Record] = []

    def consume(consumer: Consumer, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            batch = consumer.poll(100, 0.2)
            if batch:
                seen.extend(batch)
                with contextlib.suppress(CommitLost):  # the new owner redelivers it
                    consumer.commit(batch)

    try:
        batch = poll_until(first, at_least(1))
        seen.extend(batch)
        joiner = threading.Thread(target=consume, args=(second, 8))
        def assignments() -> int:
            return sum("partitions assigned" in r.getMessage() for r in caplog.records)

        with first.processing():
            before = assignments()
            joiner.start()
            # The rebalance is over once both members were assigned anew (bounded wait).
            deadline = time.monotonic() + 60
            while assignments() < before + 2:
                assert time.monotonic() < deadline, "the joiner's rebalance never completed"
                time.sleep(0.1)
            caplog.clear()
            time.sleep(2.5)  # a quiet window: any further partition movement is churn
            churn = [r.getMessage() for r in caplog.records if "partitions" in r.getMessage()]
        still_assigned = first.lag()  # keys: the partitions `first` owns now
        with contextlib.suppress(CommitLost):  # its batch's partition may have moved
            first.commit(batch)
        consume(first, 4)
        joiner.join()
    finally:
        first.close()
        second.close()

    assert still_assigned, "the member busy in processing() was evicted"
    # Settled means no partition moves any more; kafka-python's join handling turns
    # spaced zero-timeout keep-alive polls into a rebalance every poll.
    assert churn == []
    assert {r.key for r in seen} == {f"k{i}" for i in range(60)}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again on exit: nothing listens there


def test_unreachable_broker_raises_bus_unavailable():
    """Producing to, or polling from, a broker nobody listens for raises BusUnavailable quickly."""
    settings = KafkaSettings(bootstrap=f"127.0.0.1:{_closed_port()}")
    bus = KafkaBus(settings, timeouts=KafkaTimeouts(request_ms=2_000, bootstrap_ms=2_000, delivery_ms=4_000))
    started = time.monotonic()

    with pytest.raises(BusUnavailable):
        bus.producer().send([Outgoing("events", "k", b"v")])
    with pytest.raises(BusUnavailable):
        bus.consumer("g", ["events"]).poll(10, 0.5)

    assert time.monotonic() - started < 15


def test_clients_survive_a_broker_restart(
    own_kafka_broker, kafka_settings: KafkaSettings, poll_until: PollUntil
):
    """While the broker is down send and lag raise BusUnavailable; once it is back the same clients work."""
    bus = KafkaBus(
        kafka_settings,
        timeouts=KafkaTimeouts(request_ms=2_000, bootstrap_ms=5_000, delivery_ms=4_000, probe_ms=1_000),
    )
    events = make_topic(bus, kafka_settings, "events")
    producer = bus.producer()
    producer.send([Outgoing(events, "k", b"before")])
    reader = bus.consumer(f"{kafka_settings.topic_prefix}.reader", [events])
    received = poll_until(reader, lambda got: b"before" in [r.value for r in got])
    reader.commit(received)

    own_kafka_broker.stop()
    try:
        with pytest.raises(BusUnavailable):
            producer.send([Outgoing(events, "k", b"during")])
        # The lag query is what tells an idle daemon the broker is gone (/readyz).
        with pytest.raises(BusUnavailable):
            reader.lag()
    finally:
        own_kafka_broker.start()
    producer.send([Outgoing(events, "k", b"after")])
    producer.close()

    try:
        values = [r.value for r in poll_until(reader, lambda got: b"after" in [r.value for r in got])]
        assert sum(reader.lag().values()) > 0  # "after" is read but not committed
    finally:
        reader.close()
        bus.close()
    # "during" may or may not have reached the log before the broker stopped; the
    # worker would retry that batch anyway, and idempotent consumers absorb a repeat.
    assert values[-1] == b"after"
    assert b"before" not in values  # committed before the outage: not redelivered


def test_topics_are_created_compacted_with_the_requested_partitions(
    kafka_bus: KafkaBus, kafka_settings: KafkaSettings
):
    """ensure_topics creates compacted (or plain) topics with their partition counts, idempotently."""
    compacted = f"{kafka_settings.topic_prefix}.docs"
    plain = f"{kafka_settings.topic_prefix}.log"
    specs = [TopicSpec(compacted, 4), TopicSpec(plain, 2, compacted=False)]

    kafka_bus.ensure_topics(specs)
    kafka_bus.ensure_topics(specs)  # already there: fine

    assert {compacted, plain} <= set(kafka_bus.list_topics())
    admin = KafkaAdminClient(bootstrap_servers=kafka_settings.bootstrap)
    try:
        described = {t["name"]: len(t["partitions"]) for t in admin.describe_topics([compacted, plain])}
        configs = admin.describe_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, compacted),
                ConfigResource(ConfigResourceType.TOPIC, plain),
            ]
        )["topic"]
    finally:
        admin.close()
    assert described == {compacted: 4, plain: 2}
    docs = {key: entry["value"] for key, entry in configs[compacted].items()}
    assert docs["cleanup.policy"] == "compact"
    assert docs["min.cleanable.dirty.ratio"] == "0.1"
    assert docs["segment.ms"] == "600000"
    assert configs[plain].get("cleanup.policy", {"value": "delete"})["value"] == "delete"


def test_one_megabyte_value_round_trips(
    kafka_bus: KafkaBus, kafka_settings: KafkaSettings, poll_until: PollUntil
):
    """A 1 MB incompressible value (a large vectors event) is produced and consumed intact."""
    value = os.urandom(1_000_000)
    assert round_trip(kafka_bus, kafka_settings, value, poll_until) == value


def round_trip(bus: KafkaBus, settings: KafkaSettings, value: bytes, poll_until: PollUntil) -> bytes | None:
    """Produce ``value`` to a new topic and read it back with a new group."""
    events = make_topic(bus, settings, "big", partitions=1)
    send(bus, [Outgoing(events, "big", value)])
    reader = bus.consumer(f"{settings.topic_prefix}.reader", [events])
    try:
        (record,) = poll_until(reader, at_least(1))
    finally:
        reader.close()
    return record.value


def test_non_utf8_key_is_polled_and_produced_back_byte_for_byte(
    kafka_bus: KafkaBus, kafka_settings: KafkaSettings, poll_until: PollUntil
):
    """A key that is not UTF-8 polls without error and is produced back with identical bytes."""
    source = make_topic(kafka_bus, kafka_settings, "raw")
    copies = make_topic(kafka_bus, kafka_settings, "copies")
    key = b"docs/caf\xe9-\xff\xfe"  # Latin-1 bytes: invalid UTF-8
    raw = KafkaProducer(bootstrap_servers=kafka_settings.bootstrap)
    try:
        raw.send(source, key=key, value=b"body").get(timeout=20)
    finally:
        raw.close()

    reader = kafka_bus.consumer(f"{kafka_settings.topic_prefix}.reader", [source])
    try:
        (record,) = poll_until(reader, at_least(1))
    finally:
        reader.close()
    assert record.key is not None
    assert record.key.encode("utf-8", "surrogateescape") == key
    send(kafka_bus, [Outgoing(copies, record.key, record.value)])

    assert [(r.key, r.value) for r in raw_records(kafka_settings, copies, 1)] == [(key, b"body")]


def raw_records(settings: KafkaSettings, topic: str, count: int) -> list[Any]:
    """Records as kafka-python sees them (keys as bytes), read from the start; fails after 20 s."""
    consumer = KafkaConsumer(
        topic, bootstrap_servers=settings.bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    received: list[Any] = []
    deadline = time.monotonic() + 20
    try:
        while len(received) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                received.extend(batch)
    finally:
        consumer.close()
    assert len(received) >= count, f"got {len(received)} of {count} records"
    return received


def message_limits(settings: KafkaSettings, *topics: str) -> dict[str, int]:
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap)
    try:
        configs = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t, ["max.message.bytes"]) for t in topics],
            config_filter="all",
        )["topic"]
    finally:
        admin.close()
    return {t: int(configs[t]["max.message.bytes"]["value"]) for t in topics}


def test_ensure_topics_raises_a_lower_message_limit_and_keeps_a_higher_one(kafka_settings: KafkaSettings):
    """Existing topics get max.message.bytes raised to the bus's limit; a higher limit is left alone."""
    small, large, wanted = 150_000, 9_000_000, 3_000_000
    low, high = f"{kafka_settings.topic_prefix}.low", f"{kafka_settings.topic_prefix}.high"
    buses = [KafkaBus(kafka_settings, max_message_bytes=size, timeouts=IMPATIENT) for size in (small, large)]
    bus = KafkaBus(kafka_settings, max_message_bytes=wanted, timeouts=IMPATIENT)
    try:
        buses[0].ensure_topics([TopicSpec(low, 1)])
        buses[1].ensure_topics([TopicSpec(high, 1)])
        assert message_limits(kafka_settings, low, high) == {low: small, high: large}

        bus.ensure_topics([TopicSpec(low, 1), TopicSpec(high, 1)])

        assert message_limits(kafka_settings, low, high) == {low: wanted, high: large}
    finally:
        bus.delete_topics([low, high])
        for each in (*buses, bus):
            each.close()


def test_message_within_a_raised_limit_round_trips(kafka_settings: KafkaSettings, poll_until: PollUntil):
    """With max_message_bytes above the broker default, producer, topic and consumer all accept it."""
    bus = KafkaBus(kafka_settings, max_message_bytes=6_000_000, timeouts=IMPATIENT)
    value = os.urandom(5_000_000)
    try:
        assert round_trip(bus, kafka_settings, value, poll_until) == value
    finally:
        bus.delete_topics([t for t in bus.list_topics() if t.startswith(kafka_settings.topic_prefix)])
        bus.close()


def test_message_over_the_producer_limit_is_poison_naming_its_key(
    kafka_bus: KafkaBus, kafka_settings: KafkaSettings
):
    """A message over max_message_bytes is MessageTooLarge naming key and size; the producer goes on."""
    events = make_topic(kafka_bus, kafka_settings, "events", partitions=1)
    small = KafkaBus(kafka_settings, max_message_bytes=100_000, timeouts=IMPATIENT)
    producer = small.producer()
    try:
        with pytest.raises(MessageTooLarge, match=r"key 'docs/big\.md'.* 200\d{3} bytes") as raised:
            producer.send(
                [
                    Outgoing(events, "docs/ok.md", b"fits"),
                    Outgoing(events, "docs/big.md", os.urandom(200_000)),
                ]
            )
        assert (raised.value.key, raised.value.size) == ("docs/big.md", 200_000 + len("docs/big.md"))
        producer.send([Outgoing(events, "docs/small.md", b"fits")])  # the producer is still usable
    finally:
        producer.close()
        small.close()


def test_message_over_the_topic_limit_is_poison_naming_its_key(
    kafka_bus: KafkaBus, kafka_settings: KafkaSettings
):
    """A message the broker refuses as too large for the topic raises MessageTooLarge, not a fatal error."""
    strict = KafkaBus(kafka_settings, max_message_bytes=100_000, timeouts=IMPATIENT)
    try:
        events = make_topic(strict, kafka_settings, "strict", partitions=1)  # topic limit 100 kB
    finally:
        strict.close()
    producer = kafka_bus.producer()  # client limit 2 MB: the broker has to refuse it
    try:
        with pytest.raises(MessageTooLarge, match=r"key 'docs/big\.md'.*max\.message\.bytes"):
            producer.send([Outgoing(events, "docs/big.md", os.urandom(300_000))])
        producer.send([Outgoing(events, "docs/small.md", b"fits")])
    finally:
        producer.close()
