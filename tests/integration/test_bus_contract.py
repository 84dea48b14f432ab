"""One behavioural contract, two adapters: what the stages rely on from any ``Bus``.

Every test runs against the in-process bus and against a real Kafka broker, over
PLAINTEXT and over SASL_SSL (SCRAM-SHA-512, verified TLS), so the embedded mode and the
Kafka deployment, secured or not, cannot drift apart unnoticed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

import pytest

from pipeline.bus import Bus, Consumer, Outgoing, Record, TopicSpec
from pipeline.bus.memory import InMemoryBus
from pipeline.observability import NullObserver
from pipeline.stages.worker import Worker

PollUntil = Callable[[Consumer, Callable[[list[Record]], bool]], list[Record]]
PARTITIONS = 3


class Topics:
    """Topic and group names under the test's prefix (unique per test on the shared broker)."""

    def __init__(self, bus: Bus, prefix: str) -> None:
        self._bus = bus
        self._prefix = prefix

    def __call__(self, name: str) -> str:
        topic = f"{self._prefix}.{name}"
        self._bus.ensure_topics([TopicSpec(topic, PARTITIONS)])
        return topic

    def group(self, name: str) -> str:
        return f"{self._prefix}.{name}"


#: Kafka variants: the fixtures that give each one's bus and settings.
KAFKA_FIXTURES = {
    "kafka": ("kafka_bus", "kafka_settings"),
    "kafka-sasl-ssl": ("sasl_ssl_bus", "sasl_ssl_settings"),
}


@pytest.fixture(params=["memory", *(pytest.param(name, marks=pytest.mark.kafka) for name in KAFKA_FIXTURES)])
def adapter(request: pytest.FixtureRequest) -> tuple[Bus, str]:
    """The bus under test and the topic prefix that is this test's own."""
    if request.param == "memory":
        return InMemoryBus(default_partitions=PARTITIONS), "t"
    bus_fixture, settings_fixture = KAFKA_FIXTURES[request.param]
    kafka_bus: Bus = request.getfixturevalue(bus_fixture)
    return kafka_bus, request.getfixturevalue(settings_fixture).topic_prefix


@pytest.fixture
def bus(adapter: tuple[Bus, str]) -> Bus:
    return adapter[0]


@pytest.fixture
def topic(adapter: tuple[Bus, str]) -> Topics:
    return Topics(*adapter)


@pytest.fixture
def consumers(bus: Bus) -> Iterator[Callable[[str, Sequence[str]], Consumer]]:
    """Open consumers through this; whatever is still open is closed after the test."""
    opened: list[Consumer] = []

    def open_consumer(group: str, topics: Sequence[str]) -> Consumer:
        opened.append(bus.consumer(group, topics))
        return opened[-1]

    yield open_consumer
    for consumer in opened:
        consumer.close()


def send(bus: Bus, topic: str, items: Sequence[tuple[str, bytes | None]]) -> None:
    producer = bus.producer()
    try:
        producer.send([Outgoing(topic, key, value) for key, value in items])
    finally:
        producer.close()


def positions(records: Sequence[Record]) -> set[tuple[str, int, int]]:
    return {(r.topic, r.partition, r.offset) for r in records}


def at_least(count: int) -> Callable[[list[Record]], bool]:
    return lambda received: len(received) >= count


def test_records_of_one_key_come_back_in_order(bus: Bus, topic: Topics, consumers, poll_until: PollUntil):
    """Records sharing a key arrive on one partition, in the order they were sent."""
    events = topic("events")
    send(bus, events, [(f"doc-{i % 3}", str(i).encode()) for i in range(30)])

    received = poll_until(consumers(topic.group("g"), [events]), at_least(30))

    for key in ("doc-0", "doc-1", "doc-2"):
        mine = [r for r in received if r.key == key]
        assert [int(r.value or b"") for r in mine] == list(range(int(key[-1]), 30, 3))
        assert len({r.partition for r in mine}) == 1


def test_committed_batch_is_not_redelivered_but_uncommitted_is(
    bus: Bus, topic: Topics, consumers, poll_until: PollUntil
):
    """After a commit the group resumes after the batch; without one it gets the batch again."""
    events = topic("events")
    send(bus, events, [(f"k{i}", b"first") for i in range(5)])
    first = consumers(topic.group("g"), [events])
    committed = poll_until(first, at_least(5))
    first.commit(committed)
    first.close()

    send(bus, events, [(f"k{i}", b"second") for i in range(5)])
    second = consumers(topic.group("g"), [events])
    uncommitted = poll_until(second, at_least(5))
    assert {r.value for r in uncommitted} == {b"second"}
    second.close()  # without committing

    third = consumers(topic.group("g"), [events])
    assert positions(poll_until(third, at_least(5))) == positions(uncommitted)


def test_groups_read_independently(bus: Bus, topic: Topics, consumers, poll_until: PollUntil):
    """A commit by one group does not move another group's position."""
    events = topic("events")
    send(bus, events, [(f"k{i}", b"v") for i in range(4)])
    indexer = consumers(topic.group("indexer"), [events])
    indexer.commit(poll_until(indexer, at_least(4)))

    auditor = consumers(topic.group("auditor"), [events])
    assert len(poll_until(auditor, at_least(4))) == 4


def test_headers_and_none_values_round_trip(bus: Bus, topic: Topics, consumers, poll_until: PollUntil):
    """Repeated and binary headers keep their order and bytes; a None value stays None."""
    events = topic("events")
    headers = (("trace", b"1"), ("trace", b"2"), ("blob", b"\x00\xff"))
    producer = bus.producer()
    producer.send([Outgoing(events, "doc", b"body", headers), Outgoing(events, "doc", None)])
    producer.close()

    body, tombstone = poll_until(consumers(topic.group("g"), [events]), at_least(2))

    assert (body.key, body.value, body.headers) == ("doc", b"body", headers)
    assert (tombstone.key, tombstone.value, tombstone.headers) == ("doc", None, ())


def test_lag_drops_to_zero_after_commit(bus: Bus, topic: Topics, consumers, poll_until: PollUntil):
    """Lag counts uncommitted records per partition and is zero once the batch is committed."""
    events = topic("events")
    send(bus, events, [(f"k{i}", b"v") for i in range(6)])
    consumer = consumers(topic.group("g"), [events])
    batch = poll_until(consumer, at_least(6))

    assert sum(consumer.lag().values()) == 6
    consumer.commit(batch)
    assert set(consumer.lag().values()) == {0}


def test_processing_context_wraps_a_batch(bus: Bus, topic: Topics, consumers, poll_until: PollUntil):
    """Records that arrive while a batch is being processed are delivered after it, none lost."""
    events = topic("events")
    send(bus, events, [(f"k{i}", b"early") for i in range(3)])
    consumer = consumers(topic.group("g"), [events])
    batch = poll_until(consumer, at_least(3))

    with consumer.processing():
        send(bus, events, [(f"k{i}", b"late") for i in range(3)])
        time.sleep(1.5)  # long enough for the Kafka adapter's keep-alive to poll
    consumer.commit(batch)

    late = poll_until(consumer, at_least(3))
    assert [r.value for r in late] == [b"late"] * 3


class Exclaim:
    """A stage that copies each record to ``out`` with a "!" appended."""

    name = "exclaim"

    def __init__(self, out: str) -> None:
        self.out = out

    def handle(self, records: Sequence[Record]) -> list[Outgoing]:
        return [Outgoing(self.out, r.key or "", (r.value or b"") + b"!") for r in records]


def test_worker_moves_a_batch_and_commits(bus: Bus, topic: Topics, consumers, poll_until: PollUntil):
    """The worker loop produces a stage's output and commits its input through the port."""
    events, out = topic("events"), topic("out")
    send(bus, events, [(f"k{i}", b"hi") for i in range(4)])
    producer = bus.producer()
    worker = Worker(
        consumers(topic.group("g"), [events]), producer, Exclaim(out), NullObserver(), poll_timeout_s=0.2
    )

    handled = 0
    deadline = time.monotonic() + 20
    while handled < 4 and time.monotonic() < deadline:
        handled += worker.run_batch()
    producer.close()

    assert handled == 4
    assert sum(worker.report_lag().values()) == 0
    assert {r.value for r in poll_until(consumers(topic.group("reader"), [out]), at_least(4))} == {b"hi!"}
