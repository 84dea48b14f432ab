"""The Kafka deployment over SASL_SSL (SCRAM-SHA-512, verified TLS), and where its secrets go.

One run of real daemons (source fs -> embed -> sink) at DEBUG log level, configured with
known secrets, through failures: a poison event (dead-lettered with headers) and a worker
started with a wrong password (exit 5). Its index must equal the folder, and no secret may
appear in any output: daemon logs, ``embedstream config``, ``/metrics``, the DLQ.

The daemons talk to the broker's SASL_SSL listener only; the test itself observes topics
and offsets through the broker's PLAINTEXT listener (same broker, same topics).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from kafka import KafkaConsumer

from pipeline.config.settings import KafkaSettings
from pipeline.core.events import ChangeEvent
from tests.conftest import REPO
from tests.e2e.kafka_harness import KafkaPipeline
from tests.groundtruth import PointSets, expected_points
from tests.kafka_fixtures import BOOTSTRAP_ENV, SCRAM_USER, KafkaPki

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(600)]

WRONG_PASSWORD = f"wrong-{secrets.token_hex(8)}"
STORE_API_KEY = f"qdrant-key-{secrets.token_hex(8)}"
TOPICS = ["harbours", "lighthouses", "glaciers", "orchards", "violins"]


@dataclass
class SecuredRun:
    """What one secured deployment produced, for the tests to check."""

    secrets: dict[str, str]
    index: PointSets
    expected: PointSets
    outputs: dict[str, str] = field(default_factory=dict)  # where -> text
    dead_letters: list[Any] = field(default_factory=list)
    rejected_exit: int | None = None
    rejected_seconds: float = 0.0


def secured_env(bootstrap: str, pki: KafkaPki) -> dict[str, str]:
    """Every daemon's security settings, as an operator would give them: environment variables."""
    return {
        "EMBEDSTREAM_LOG_LEVEL": "DEBUG",
        "EMBEDSTREAM_KAFKA__BOOTSTRAP": bootstrap,
        "EMBEDSTREAM_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "EMBEDSTREAM_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
        "EMBEDSTREAM_KAFKA__SASL_USERNAME": SCRAM_USER,
        "EMBEDSTREAM_KAFKA__SASL_PASSWORD": pki.scram_password,
        "EMBEDSTREAM_KAFKA__SSL_CAFILE": str(pki.ca),
        # The SASL_SSL listener does not ask for a client certificate; given one, the
        # daemons still load it, so its key password passes through their settings too.
        "EMBEDSTREAM_KAFKA__SSL_CERTFILE": str(pki.client_cert),
        "EMBEDSTREAM_KAFKA__SSL_KEYFILE": str(pki.client_key),
        "EMBEDSTREAM_KAFKA__SSL_PASSWORD": pki.client_key_password,
        "EMBEDSTREAM_STORE__API_KEY": STORE_API_KEY,  # unused by the embedded store: shown masked only
    }


def write_docs(root: Path) -> Path:
    docs = root / "docs"
    docs.mkdir()
    for i, topic in enumerate(TOPICS):
        (docs / f"{topic}.md").write_text("\n\n".join(f"{topic} fact {j} number {i}." for j in range(3 + i)))
    return docs


def metrics_of(deployment: KafkaPipeline) -> dict[str, str]:
    """Each running daemon's /metrics page."""
    pages = {}
    for daemon in deployment.daemons:
        url = next((r["http"] for r in daemon.log_records() if "http" in r), None)
        if url is not None and daemon.alive():
            with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
                pages[f"{daemon.name} /metrics"] = response.read().decode()
    return pages


def read_dlq(bootstrap: str, topic: str) -> list[Any]:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    records: list[Any] = []
    try:
        deadline = time.monotonic() + 20
        while not records and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
    finally:
        consumer.close()
    return records


def embedstream_config(env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "config"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def secured_run(
    tmp_path_factory: pytest.TempPathFactory, kafka_broker: Any, kafka_pki: KafkaPki, tiny_model: Path
) -> SecuredRun:
    """Index a folder with real daemons over SASL_SSL, fail on purpose twice, collect every output."""
    if os.environ.get(BOOTSTRAP_ENV):
        pytest.skip(f"{BOOTSTRAP_ENV} is set: that broker's secured listeners are unknown")
    root = tmp_path_factory.mktemp("secured")
    observer = KafkaSettings(
        bootstrap=kafka_broker.bootstrap, topic_prefix=f"t{uuid4().hex[:8]}", partitions=3
    )
    env = secured_env(kafka_broker.listener("SASL_SSL"), kafka_pki)
    deployment = KafkaPipeline(root, observer, tiny_model, **env)
    docs = write_docs(root)
    try:
        source = deployment.start("source", "fs", str(docs), "--interval", "0.5")
        embed = deployment.start("embed")
        sink = deployment.start("sink")
        poison = ChangeEvent(source="kt", doc_id="poison", op="upsert", text="x", version=1).key
        deployment.produce_raw([(poison, b"{this is not json")])
        deployment.produced = len(TOPICS) + 1
        deployment.wait_drained()
        run = SecuredRun(
            secrets={
                "kafka.sasl_password": kafka_pki.scram_password,
                "kafka.ssl_password": kafka_pki.client_key_password,
                "store.api_key": STORE_API_KEY,
                "the wrong password": WRONG_PASSWORD,
            },
            index={},
            expected=expected_points(docs, deployment.chunker),
        )
        run.outputs.update(metrics_of(deployment))
        run.dead_letters = read_dlq(observer.bootstrap, deployment.topics.dlq)

        started = time.monotonic()
        rejected = deployment.start("embed", EMBEDSTREAM_KAFKA__SASL_PASSWORD=WRONG_PASSWORD)
        run.rejected_exit = rejected.wait(60)
        run.rejected_seconds = time.monotonic() - started

        for daemon in (source, embed, sink):
            assert daemon.stop() == 0, daemon.output()[-3000:]
        run.index = deployment.points()
        run.outputs["embedstream config"] = embedstream_config({**deployment.env, **env})
        for daemon in deployment.daemons:
            run.outputs[f"{daemon.name} log"] = daemon.output()
        return run
    finally:
        deployment.close()


def test_folder_is_indexed_exactly_over_sasl_ssl(secured_run: SecuredRun):
    """source fs -> embed -> sink, all over SASL_SSL with SCRAM-SHA-512: the index equals the folder."""
    assert secured_run.index == secured_run.expected
    assert len(secured_run.index) == len(TOPICS)


def test_a_daemon_with_a_wrong_password_exits_5_fast_saying_so(secured_run: SecuredRun):
    """A worker whose password the broker rejects exits 5 within 30 s, saying authentication failed."""
    log = next(text for where, text in secured_run.outputs.items() if where == "embed-3 log")
    assert secured_run.rejected_exit == 5, log[-3000:]
    assert secured_run.rejected_seconds < 30
    assert f"authentication failed for user '{SCRAM_USER}'" in log


def test_no_secret_appears_in_any_output(secured_run: SecuredRun):
    """Logs at DEBUG, `embedstream config`, /metrics and dead letters never contain a secret."""
    assert len(secured_run.dead_letters) == 1, "the poison event was not dead-lettered"
    for letter in secured_run.dead_letters:
        headers = "\n".join(f"{name}={value!r}" for name, value in letter.headers)
        secured_run.outputs["DLQ record"] = f"{letter.key!r}\n{headers}\n{letter.value!r}"
    assert {"embedstream config", "source-0 log", "embed-1 log", "sink-2 log"} <= set(secured_run.outputs)
    assert sum(where.endswith("/metrics") for where in secured_run.outputs) == 3
    assert "**********" in secured_run.outputs["embedstream config"]
    logs = [text for where, text in secured_run.outputs.items() if where.endswith(" log")]
    assert any('"level": "debug"' in text for text in logs), "the daemons did not log at DEBUG"
    assert all(letter.headers for letter in secured_run.dead_letters)

    for where, text in secured_run.outputs.items():
        for what, secret in secured_run.secrets.items():
            assert secret not in text, f"{what} appears in {where}"
