"""Kafka fixtures (a pytest plugin): one real single-node broker per session, unique topics per test.

The broker listens on PLAINTEXT and, beside it, on TLS and SASL_SSL (SCRAM) listeners
whose CA, certificates and SCRAM user are made for this session (:mod:`tests.pki`).

Set ``EMBEDSTREAM_KAFKA_BOOTSTRAP`` to run the Kafka tests against an existing broker
instead; tests that stop or restart the broker, or need its secured listeners, then skip,
since it is not theirs.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from pipeline.bus import Consumer, Record
from pipeline.bus.kafka import KafkaBus, KafkaTimeouts
from pipeline.config.settings import KafkaSettings
from pipeline.core.errors import EmbedstreamError
from tests.pki import CertificateAuthority

REPO = Path(__file__).resolve().parents[1]
KAFKA_LIBS = REPO / ".cache" / "kafka" / "libs"
BOOTSTRAP_ENV = "EMBEDSTREAM_KAFKA_BOOTSTRAP"
SCRAM_USER = "embedstream"


def _broker_module() -> Any:
    # ops/kafka is a script directory, not a package.
    sys.path.insert(0, str(REPO / "ops" / "kafka"))
    try:
        return importlib.import_module("broker")
    finally:
        sys.path.remove(str(REPO / "ops" / "kafka"))


@dataclass(frozen=True)
class KafkaPki:
    """This session's TLS material: what clients are given, and what they must refuse."""

    ca: Path  # signed every broker certificate
    rogue_ca: Path  # signed nothing the broker serves: "untrusted CA"
    client_cert: Path  # signed by ``ca``, for the MUTUAL_TLS listener
    client_key: Path  # encrypted with ``client_key_password``
    client_key_password: str
    keystore: Path  # the broker's certificate for 127.0.0.1 and localhost
    wrong_host_keystore: Path  # the broker's certificate for another host name only
    keystore_password: str
    scram_password: str  # of SCRAM_USER


@pytest.fixture(scope="session")
def kafka_pki(tmp_path_factory: pytest.TempPathFactory) -> KafkaPki:
    """A throwaway CA, broker keystores, a client certificate and a SCRAM password."""
    root = tmp_path_factory.mktemp("kafka-pki")
    ca = CertificateAuthority("embedstream test CA")
    pki = KafkaPki(
        ca=ca.write_pem(root / "ca.pem"),
        rogue_ca=CertificateAuthority("somebody else's CA").write_pem(root / "rogue-ca.pem"),
        client_cert=root / "client.pem",
        client_key=root / "client.key",
        client_key_password=secrets.token_urlsafe(12),
        keystore=root / "broker.p12",
        wrong_host_keystore=root / "wrong-host.p12",
        keystore_password=secrets.token_urlsafe(12),
        scram_password=secrets.token_urlsafe(16),
    )
    client = ca.issue("embedstream client", [], client=True)
    client.write_pem(pki.client_cert, pki.client_key, pki.client_key_password)
    ca.issue("broker", ["127.0.0.1", "localhost"]).write_pkcs12(pki.keystore, pki.keystore_password, ca.cert)
    ca.issue("elsewhere", ["elsewhere.invalid"]).write_pkcs12(
        pki.wrong_host_keystore, pki.keystore_password, ca.cert
    )
    return pki


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory, kafka_pki: KafkaPki) -> Iterator[Any]:
    """A started ``KafkaBroker`` owned by this session (stop/restart it at will)."""
    if not any(KAFKA_LIBS.glob("kafka_2.13-*.jar")):
        pytest.fail(f"no Kafka jars in {KAFKA_LIBS}: run `make kafka-jars`")
    broker_module = _broker_module()
    security = broker_module.BrokerSecurity(
        keystore=kafka_pki.keystore,
        wrong_host_keystore=kafka_pki.wrong_host_keystore,
        keystore_password=kafka_pki.keystore_password,
        client_ca=kafka_pki.ca,
        scram_users={SCRAM_USER: kafka_pki.scram_password},
    )
    broker = broker_module.KafkaBroker(KAFKA_LIBS, tmp_path_factory.mktemp("kafka"), security=security)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A started 3-node ``KafkaCluster`` (each node broker and controller) owned by this module.

    Kill and restart its nodes at will; every node still running is stopped by pid at the
    end of the module. It ignores ``EMBEDSTREAM_KAFKA_BOOTSTRAP``: an external cluster's
    nodes are not the test's to kill.
    """
    if not any(KAFKA_LIBS.glob("kafka_2.13-*.jar")):
        pytest.fail(f"no Kafka jars in {KAFKA_LIBS}: run `make kafka-jars`")
    cluster = _broker_module().KafkaCluster(KAFKA_LIBS, tmp_path_factory.mktemp("kafka-cluster"), size=3)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


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


@pytest.fixture
def secured_broker(request: pytest.FixtureRequest) -> Any:
    """The session broker, for tests of its TLS and SASL_SSL listeners; skips on an external one."""
    if os.environ.get(BOOTSTRAP_ENV):
        pytest.skip(f"{BOOTSTRAP_ENV} is set: that broker's secured listeners are unknown")
    return request.getfixturevalue("kafka_broker")


@pytest.fixture
def sasl_ssl_settings(secured_broker: Any, kafka_pki: KafkaPki) -> KafkaSettings:
    """Like ``kafka_settings``, over SASL_SSL with SCRAM-SHA-512 and the session CA."""
    return KafkaSettings(
        bootstrap=secured_broker.listener("SASL_SSL"),
        topic_prefix=f"t{uuid4().hex[:8]}",
        partitions=3,
        batch_max_wait_ms=100,
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username=SCRAM_USER,
        sasl_password=kafka_pki.scram_password,
        ssl_cafile=kafka_pki.ca,
    )


#: Fail fast and rebalance quickly: a lost member is noticed in seconds, not minutes.
#: 6 s is the broker's minimum session timeout (group.min.session.timeout.ms).
TEST_TIMEOUTS = KafkaTimeouts(
    request_ms=10_000, bootstrap_ms=10_000, delivery_ms=15_000, session_ms=6_000, heartbeat_ms=1_000
)


def _bus_for_test(settings: KafkaSettings) -> Iterator[KafkaBus]:
    bus = KafkaBus(settings, client_id="embedstream-test", timeouts=TEST_TIMEOUTS)
    try:
        yield bus
    finally:
        with contextlib.suppress(EmbedstreamError):
            bus.delete_topics([t for t in bus.list_topics() if t.startswith(settings.topic_prefix)])
        bus.close()


@pytest.fixture
def kafka_bus(kafka_settings: KafkaSettings) -> Iterator[KafkaBus]:
    """A bus on the test broker; its topics (this test's prefix) are deleted afterwards."""
    yield from _bus_for_test(kafka_settings)


@pytest.fixture
def sasl_ssl_bus(sasl_ssl_settings: KafkaSettings) -> Iterator[KafkaBus]:
    """``kafka_bus`` over SASL_SSL (SCRAM-SHA-512, TLS verified against the session CA)."""
    yield from _bus_for_test(sasl_ssl_settings)


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
