"""A model change on a running index version is caught, not silently dead-lettered: real daemons.

An embed worker whose model differs from the version's registered spec exits 3 at start-up,
pointing at `migrate`; a sink that receives vectors of another model says so on /readyz.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pipeline.bus import Outgoing
from pipeline.config.settings import KafkaSettings
from pipeline.core.events import ChunkRef, VectorsEvent
from tests.e2e.kafka_harness import KafkaPipeline, document, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.fixture
def deployment(tmp_path: Path, kafka_settings: KafkaSettings, tiny_model: Path) -> Iterator[KafkaPipeline]:
    pipeline = KafkaPipeline(tmp_path, kafka_settings, tiny_model)
    yield pipeline
    pipeline.close()


def readyz(daemon: object) -> tuple[int, str]:
    """Status and body of the daemon's /readyz (0 and "" while it does not answer)."""
    url = next((r["http"] for r in daemon.log_records() if "http" in r), None)  # type: ignore[attr-defined]
    if url is None:
        return 0, ""
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()
    except OSError:
        return 0, ""


def test_an_embed_worker_of_another_model_refuses_to_start(deployment, other_tiny_model):
    """Version 1 registered with model A; an embed worker started with model B exits 3 and
    says to start a migration, without consuming anything."""
    deployment.start("embed")
    deployment.start("sink")
    deployment.produce([document("a", 1, "harbours", 3)])
    deployment.wait_drained()
    other = deployment.start("embed", EMBEDSTREAM_MODEL__NAME=str(other_tiny_model))
    assert other.wait(180) == 3, other.output()[-3000:]
    output = other.output()
    assert "this embed worker cannot write docs@v1" in output
    assert "embedstream migrate start docs" in output


def test_a_sink_fed_another_models_vectors_reports_it_on_readyz(deployment):
    """Vectors of a foreign fingerprint are dead-lettered as foreign_model and /readyz turns
    503 naming the model and the way out (migrate start, dlq replay)."""
    sink = deployment.start("sink")
    deployment.start("embed")
    deployment.produce([document("a", 1, "harbours", 3)])
    deployment.wait_drained()
    assert readyz(sink)[0] == 200
    foreign = VectorsEvent(
        source="kt", doc_id="b", op="upsert", version=1, content_hash="h", fingerprint="someone-else@42",
        metadata={}, emitted_at=0.0, chunks=(ChunkRef("7b0e3c9e-0000-5000-8000-000000000002", 0, "c", "t"),),
        vectors=np.ones((1, 32), dtype=np.float32) / np.sqrt(32),
    )  # fmt: skip
    topic = deployment.topics.vectors("docs", 1)
    deployment._bus.producer().send([Outgoing(topic, foreign.key, foreign.to_bytes())])

    def reported() -> bool:
        status, body = readyz(sink)
        return status == 503 and "someone-else@42" in body

    wait_for(reported, 60, "the sink to report the foreign model on /readyz")
    body = readyz(sink)[1]
    assert "migrate start docs" in body
    assert "dlq replay --reason foreign_model" in body
    letters = [
        json.loads(line) for line in sink.output().splitlines() if "foreign" in line and line.startswith("{")
    ]
    assert letters  # the dead letter was logged with its reason
