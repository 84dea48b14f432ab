"""The Kafka adapter over TLS and SASL_SSL against the real broker's secured listeners.

A rejection (wrong password, untrusted CA, certificate for another host) must stop the
caller within seconds with a message of its own and no secret in it, and the CLI must exit
with the documented code well within 30 s; a configuration that cannot work is refused
before any connection.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from pipeline.bus import Outgoing, TopicSpec
from pipeline.bus.kafka import KafkaBus, KafkaTimeouts
from pipeline.config.settings import KafkaSettings
from pipeline.core.errors import AuthenticationFailed
from tests.conftest import REPO
from tests.kafka_fixtures import SCRAM_USER, KafkaPki

pytestmark = pytest.mark.kafka

WRONG_PASSWORD = "not-the-password-7f3a"
#: Short timeouts: a test of "fails fast" must not pass merely because a timeout expired.
QUICK = KafkaTimeouts(request_ms=10_000, bootstrap_ms=10_000, delivery_ms=15_000)
#: Each rejection must show well before the bootstrap timeout (10 s here, 30 s by default).
FAST_S = 5.0
CLI_LIMIT_S = 30.0


def sasl_ssl(broker: Any, pki: KafkaPki, **changes: Any) -> KafkaSettings:
    values: dict[str, Any] = {
        "bootstrap": broker.listener("SASL_SSL"),
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": SCRAM_USER,
        "sasl_password": pki.scram_password,
        "ssl_cafile": pki.ca,
    }
    return KafkaSettings(**(values | changes))


def tls(broker: Any, pki: KafkaPki, listener: str = "SSL", **changes: Any) -> KafkaSettings:
    values: dict[str, Any] = {
        "bootstrap": broker.listener(listener),
        "security_protocol": "SSL",
        "ssl_cafile": pki.ca,
    }
    return KafkaSettings(**(values | changes))


@pytest.fixture
def open_bus() -> Iterator[Callable[[KafkaSettings], KafkaBus]]:
    """Buses made through this are closed after the test."""
    buses: list[KafkaBus] = []

    def make(settings: KafkaSettings) -> KafkaBus:
        buses.append(KafkaBus(settings, client_id="embedstream-security-test", timeouts=QUICK))
        return buses[-1]

    yield make
    for bus in buses:
        bus.close()


def rejected_everywhere(bus: KafkaBus) -> list[str]:
    """Messages of the rejection as seen by an admin call, a send and a poll, each timed."""
    calls = {
        "admin": lambda: bus.ensure_topics([TopicSpec("security-probe", 1)]),
        "send": lambda: bus.producer().send([Outgoing("security-probe", "k", b"v")]),
        "poll": lambda: bus.consumer("security-probe", ["security-probe"]).poll(10, 0.5),
    }
    messages = []
    for name, call in calls.items():
        started = time.monotonic()
        with pytest.raises(AuthenticationFailed) as raised:
            call()
        elapsed = time.monotonic() - started
        assert elapsed < FAST_S, f"{name}: rejection took {elapsed:.1f}s"
        messages.append(str(raised.value))
    return messages


def test_sasl_ssl_round_trip_with_scram_sha_256(secured_broker, kafka_pki, open_bus, poll_until):
    """The configured mechanism is the one used: the same user logs in with SCRAM-SHA-256 too."""
    bus = open_bus(sasl_ssl(secured_broker, kafka_pki, sasl_mechanism="SCRAM-SHA-256", topic_prefix="s256"))
    topic = f"s256-{os.getpid()}-{time.monotonic_ns()}"
    bus.ensure_topics([TopicSpec(topic, 1)])
    producer = bus.producer()
    producer.send([Outgoing(topic, "doc", b"over SCRAM-SHA-256")])
    producer.close()
    consumer = bus.consumer(f"{topic}.reader", [topic])
    try:
        (record,) = poll_until(consumer, lambda got: len(got) >= 1)
    finally:
        consumer.close()
        bus.delete_topics([topic])
    assert record.value == b"over SCRAM-SHA-256"


def test_wrong_password_fails_fast_naming_the_user_not_the_password(secured_broker, kafka_pki, open_bus):
    """A rejected SCRAM login raises AuthenticationFailed at once, naming the user and no password."""
    bus = open_bus(sasl_ssl(secured_broker, kafka_pki, sasl_password=WRONG_PASSWORD))

    for message in rejected_everywhere(bus):
        assert f"authentication failed for user '{SCRAM_USER}'" in message
        assert WRONG_PASSWORD not in message
        assert kafka_pki.scram_password not in message


def test_untrusted_certificate_fails_fast_with_its_own_message(secured_broker, kafka_pki, open_bus):
    """A broker certificate from a CA outside ssl_cafile is refused at once, saying so."""
    bus = open_bus(tls(secured_broker, kafka_pki, ssl_cafile=kafka_pki.rogue_ca))

    for message in rejected_everywhere(bus):
        assert "is not trusted by the CAs in kafka.ssl_cafile" in message
        assert "hostname" not in message


def test_hostname_mismatch_fails_fast_with_its_own_message(secured_broker, kafka_pki, open_bus):
    """A trusted certificate issued for another host name is refused at once, saying so."""
    bus = open_bus(tls(secured_broker, kafka_pki, listener="WRONG_HOST"))

    for message in rejected_everywhere(bus):
        assert "TLS hostname mismatch" in message
        assert "not valid for '127.0.0.1'" in message


def test_hostname_check_can_be_turned_off_but_the_chain_is_still_verified(
    secured_broker, kafka_pki, open_bus
):
    """ssl_check_hostname=false accepts the other host's certificate, never an untrusted one."""
    lenient = open_bus(tls(secured_broker, kafka_pki, listener="WRONG_HOST", ssl_check_hostname=False))
    assert isinstance(lenient.list_topics(), list)

    untrusted = open_bus(
        tls(
            secured_broker,
            kafka_pki,
            listener="WRONG_HOST",
            ssl_check_hostname=False,
            ssl_cafile=kafka_pki.rogue_ca,
        )
    )
    with pytest.raises(AuthenticationFailed, match="not trusted"):
        untrusted.list_topics()


def test_mutual_tls_with_an_encrypted_client_key(secured_broker, kafka_pki, open_bus):
    """A client certificate whose key is encrypted with ssl_password logs in to a listener requiring one."""
    bus = open_bus(
        tls(
            secured_broker,
            kafka_pki,
            listener="MUTUAL_TLS",
            ssl_certfile=kafka_pki.client_cert,
            ssl_keyfile=kafka_pki.client_key,
            ssl_password=kafka_pki.client_key_password,
        )
    )
    assert isinstance(bus.list_topics(), list)


def test_unusable_security_settings_are_refused_before_connecting(tmp_path: Path, kafka_pki):
    """Missing credentials and missing or unparseable TLS files are each one validation error."""
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("not a certificate\n")
    with pytest.raises(ValidationError) as raised:
        KafkaSettings(security_protocol="SASL_SSL", ssl_cafile=not_pem, ssl_keyfile=tmp_path / "absent.key")
    problems = {".".join(map(str, e["loc"])): e["msg"] for e in raised.value.errors()}
    assert set(problems) == {"sasl_mechanism", "sasl_username", "sasl_password", "ssl_cafile", "ssl_keyfile"}
    assert "holds no PEM CA certificate" in problems["ssl_cafile"]
    assert "does not exist" in problems["ssl_keyfile"]

    with pytest.raises(ValidationError, match="cannot load the client certificate"):
        KafkaSettings(
            security_protocol="SSL",
            ssl_certfile=kafka_pki.client_cert,
            ssl_keyfile=kafka_pki.client_key,
            ssl_password=WRONG_PASSWORD,
        )


# -- the CLI: exit codes and messages, end to end in a process -----------------------


def run_cli(env: dict[str, str], *args: str) -> tuple[int, str, float]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDSTREAM_")}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        cwd=REPO, env={**clean, **env}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return result.returncode, result.stdout + result.stderr, time.monotonic() - started


def kafka_env(settings: KafkaSettings) -> dict[str, str]:
    """The EMBEDSTREAM_KAFKA__* variables that give a daemon these settings."""
    env = {}
    for name, value in settings.model_dump(exclude_defaults=True).items():
        shown = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        env[f"EMBEDSTREAM_KAFKA__{name.upper()}"] = str(shown)
    return env


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong password", f"authentication failed for user '{SCRAM_USER}'"),
        ("untrusted CA", "is not trusted by the CAs in kafka.ssl_cafile"),
        ("hostname mismatch", "TLS hostname mismatch"),
    ],
)
def test_cli_exits_5_within_30s_on_each_rejection(secured_broker, kafka_pki, case, expected):
    """`embedstream topics create` exits 5 within 30 s with the rejection's own message."""
    settings = {
        "wrong password": sasl_ssl(secured_broker, kafka_pki, sasl_password=WRONG_PASSWORD),
        "untrusted CA": tls(secured_broker, kafka_pki, ssl_cafile=kafka_pki.rogue_ca),
        "hostname mismatch": tls(secured_broker, kafka_pki, listener="WRONG_HOST"),
    }[case]

    code, output, elapsed = run_cli(kafka_env(settings), "topics", "create")

    assert code == 5, output
    assert expected in output
    assert elapsed < CLI_LIMIT_S
    assert WRONG_PASSWORD not in output


def test_cli_exits_3_with_one_line_per_security_problem(tmp_path: Path):
    """A SASL protocol without credentials and a missing CA file exit 3, one line per problem."""
    env = {
        "EMBEDSTREAM_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "EMBEDSTREAM_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
        "EMBEDSTREAM_KAFKA__SSL_CAFILE": str(tmp_path / "missing-ca.pem"),
    }

    code, output, _ = run_cli(env, "topics", "create")

    assert code == 3, output
    problems = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(problems) == 3, output
    assert any("kafka.sasl_username" in line for line in problems)
    assert any("kafka.sasl_password" in line for line in problems)
    assert any("kafka.ssl_cafile" in line and "does not exist" in line for line in problems)
