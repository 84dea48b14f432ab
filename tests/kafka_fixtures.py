"""Kafka fixtures (a pytest plugin): one real single-node broker per session, unique topics per test.

Set ``EMBEDSTREAM_KAFKA_BOOTSTRAP`` to run the Kafka tests against an existing broker
instead; tests that stop or restart the broker then skip, since it is not theirs.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from pipeline.bus import Consumer, Record
from pipeline.bus.kafka import KafkaBus, KafkaTimeouts
from pipeline.errors import EmbedstreamError
from pipeline.settings import KafkaSettings

REPO = Path(__file__).resolve().parents[1]
KAFKA_LIBS = REPO / ".cache" / "kafka" / "libs"
BOOTSTRAP_ENV = "EMBEDSTREAM_KAFKA_BOOTSTRAP"


def _broker_class() -> Any:
    # ops/kafka is a script directory, not a package.
    sys.path.insert(0, str(REPO / "ops" / "kafka"))
    try:
        return importlib.import_module("broker").KafkaBroker
    finally:
        sys.path.remove(str(REPO / "ops" / "kafka"))


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A started ``KafkaBroker`` owned by this session (stop/restart it at will)."""
    if not any(KAFKA_LIBS.glob("kafka_2.13-*.jar")):
        pytest.fail(f"no Kafka jars in {KAFKA_LIBS}: run `make kafka-jars`")
    broker = _broker_class()(KAFKA_LIBS, tmp_path_factory.mktemp("kafka"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(request: pytest.FixtureRequest) -> str:
    """The broker address: ``$EMBEDSTREAM_KAFKA_BOOTSTRAP``, else the session broker's."""
    external = os.environ.get(BOOTSTRAP_ENV)
    if external:
        return external
    return str(request.getfixturevalue("kafka_broker").bootstrap)


@pytest.fixture
def own_kafka_broker(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The session broker, for tests that stop or restart it; skips on an external one.

    A test that fails while the broker is down leaves it down; it is started again
    here so that one failure does not fail every later Kafka test of the session.
    """
    if os.environ.get(BOOTSTRAP_ENV):
        pytest.skip(f"{BOOTSTRAP_ENV} is set: the broker is not ours to stop")
    broker = request.getfixturevalue("kafka_broker")
    yield broker
    if not broker.is_running():
        broker.start(timeout_s=120)


@pytest.fixture
def kafka_settings(kafka_bootstrap: str) -> KafkaSettings:
    """Settings with a fresh topic prefix, so tests never see each other's records."""
    return KafkaSettings(
        bootstrap=kafka_bootstrap,
        topic_prefix=f"t{uuid4().hex[:8]}",
        partitions=3,
        batch_max_wait_ms=100,
    )


#: Fail fast and rebalance quickly: a lost member is noticed in seconds, not minutes.
#: 6 s is the broker's minimum session timeout (group.min.session.timeout.ms).
TEST_TIMEOUTS = KafkaTimeouts(
    request_ms=10_000, bootstrap_ms=10_000, delivery_ms=15_000, session_ms=6_000, heartbeat_ms=1_000
)


@pytest.fixture
def kafka_bus(kafka_settings: KafkaSettings) -> Iterator[KafkaBus]:
    """A bus on the test broker; its topics (this test's prefix) are deleted afterwards."""
    bus = KafkaBus(kafka_settings, client_id="embedstream-test", timeouts=TEST_TIMEOUTS)
    try:
        yield bus
    finally:
        with contextlib.suppress(EmbedstreamError):
            bus.delete_topics([t for t in bus.list_topics() if t.startswith(kafka_settings.topic_prefix)])
        bus.close()


PollUntil = Callable[[Consumer, Callable[[list[Record]], bool]], list[Record]]


@pytest.fixture
def poll_until() -> PollUntil:
    """Poll ``consumer`` until ``done(everything_so_far)``; fail after 20 s."""

    def poll(consumer: Consumer, done: Callable[[list[Record]], bool]) -> list[Record]:
        received: list[Record] = []
        deadline = time.monotonic() + 20
        while not done(received):
            if time.monotonic() > deadline:
                pytest.fail(f"gave up waiting; received {len(received)} records: {received[:5]}")
            received += consumer.poll(100, 0.2)
        return received

    return poll
