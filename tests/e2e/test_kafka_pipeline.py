"""The Kafka deployment as real processes on a real broker: results, scaling and faults.

Every test ends with an exact comparison of the index with the ground truth: the set of
point ids per document computed from the final documents alone.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.core.events import ChangeEvent
from tests.conftest import REPO
from tests.e2e.kafka_harness import KafkaPipeline, deletion, document, wait_for
from tests.groundtruth import expected_points

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(600)]

TOPICS = ["harbours", "lighthouses", "glaciers", "orchards", "violins", "comets", "bridges", "deserts"]


@pytest.fixture
def deployment(tmp_path: Path, kafka_settings, tiny_model: Path) -> Iterator[KafkaPipeline]:
    pipeline = KafkaPipeline(tmp_path, kafka_settings, tiny_model)
    yield pipeline
    pipeline.close()


def initial_documents() -> list[ChangeEvent]:
    return [document(f"doc-{i}", 10, topic, 4 + i % 4) for i, topic in enumerate(TOPICS)]


def edits() -> list[ChangeEvent]:
    """Shrinks, a grow, deletions and a new document: every kind of change."""
    return [
        document("doc-0", 20, "harbours", 1),
        document("doc-1", 20, "lighthouses", 2),
        document("doc-2", 20, "glaciers", 9),
        deletion("doc-3", 20),
        deletion("doc-4", 20),
        document("doc-9", 20, "meteorites", 3),
    ]


def test_directory_to_qdrant_follows_edits_and_deletions(deployment, tmp_path):
    """source fs → Kafka → embed → Kafka → sink: the index equals the files, after edits too."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, topic in enumerate(TOPICS[:5]):
        (docs / f"{topic}.md").write_text("\n\n".join(f"{topic} fact {j} number {i}." for j in range(3 + i)))
    source = deployment.start("source", "fs", str(docs), "--interval", "0.5")
    embed = deployment.start("embed")
    sink = deployment.start("sink")
    deployment.produced = 5
    deployment.wait_drained()
    assert sink.stop() == 0
    assert deployment.points() == expected_points(docs, deployment.chunker)

    (docs / "harbours.md").write_text("harbours, rewritten and much shorter.")
    (docs / "glaciers.md").unlink()
    (docs / "new.md").write_text("A new document about tides and moons.")
    sink = deployment.start("sink")
    deployment.produced = 8
    deployment.wait_drained()
    for daemon in (source, embed, sink):
        assert daemon.stop() == 0, daemon.output()[-2000:]
    assert deployment.points() == expected_points(docs, deployment.chunker)


def test_two_embed_workers_share_the_partitions_with_identical_results(deployment):
    """Two embed workers in one group split the partitions; the index is exactly the ground truth."""
    events = initial_documents() + [document(f"extra-{i}", 5, "rivers", 3) for i in range(12)]
    first = deployment.start("embed")
    second = deployment.start("embed")
    sink = deployment.start("sink")

    def both_assigned() -> bool:
        return all("partitions assigned: ['" in worker.output() for worker in (first, second))

    wait_for(both_assigned, 120, "both workers to own partitions")
    deployment.produce(events)
    deployment.wait_drained()
    for daemon in (first, second, sink):
        assert daemon.stop() == 0
    assert first.encoded() > 0
    assert second.encoded() > 0, "the second worker got no partitions"
    assert first.encoded() + second.encoded() == deployment.unique_chunks(events)
    assert deployment.points() == deployment.expected(events)


def test_a_second_sink_on_the_same_embedded_store_fails_fast(deployment):
    """The embedded engine has one owner: a second sink exits 4 with a clear message."""
    owner = deployment.start("sink")
    wait_for(lambda: "sink daemon started" in owner.output(), 90, "the first sink")
    started = time.monotonic()
    intruder = deployment.start("sink")
    assert intruder.wait(60) == 4
    assert time.monotonic() - started < 60
    assert "is in use by pid" in intruder.output()
    assert owner.alive()
    assert owner.stop() == 0


@pytest.mark.parametrize(
    "crash_at",
    [
        "embed.after_encode",
        "embed.before_commit",
        "sink.after_upsert",
        "sink.after_delete",
        "sink.before_commit",
    ],
)
def test_kill_9_mid_batch_loses_nothing_and_duplicates_nothing(deployment, crash_at):
    """SIGKILL at a crash point, restart: exact ground truth, and no chunk encoded twice."""
    stage = crash_at.split(".")[0]
    embed, sink = deployment.start("embed"), deployment.start("sink")
    events = initial_documents()
    deployment.produce(events)
    deployment.wait_drained()
    assert embed.stop() == 0
    assert sink.stop() == 0

    runs = [embed]
    embed = deployment.start("embed", crash_at=crash_at if stage == "embed" else None)
    sink = deployment.start("sink", crash_at=crash_at if stage == "sink" else None)
    runs.append(embed)
    deployment.produce(edits())
    events += edits()
    victim = embed if stage == "embed" else sink
    assert victim.wait(120) == -signal.SIGKILL, victim.output()[-2000:]
    assert f"SIGKILL at {crash_at}" in victim.output()
    restarted = deployment.start(stage)
    if stage == "embed":
        embed = restarted
        runs.append(embed)
    else:
        sink = restarted
    deployment.wait_drained()
    assert embed.stop() == 0
    assert sink.stop() == 0
    assert deployment.points() == deployment.expected(events)
    # Chunks encoded before the kill were cached, so the redelivered batch costs no model time.
    assert sum(run.encoded() for run in runs) == deployment.unique_chunks(events)


def test_broker_outage_of_20_seconds_is_survived_without_restarts(deployment, own_kafka_broker):
    """Broker down 20 s mid-run: workers retry, recover by themselves, nothing is lost."""
    embed, sink = deployment.start("embed"), deployment.start("sink")
    events = initial_documents()
    deployment.produce(events[:4])
    deployment.wait_drained()
    deployment.produce(events[4:])
    assert embed.readyz() == sink.readyz() == 200
    own_kafka_broker.stop()
    outage_ends = time.monotonic() + 20
    not_ready = set()
    while time.monotonic() < outage_ends:
        not_ready |= {d.name for d in (embed, sink) if d.readyz() == 503}
        time.sleep(0.5)
    assert embed.alive()
    assert sink.alive()
    assert not_ready == {embed.name, sink.name}, "/readyz should report the outage"
    own_kafka_broker.restart()
    deployment.produce(edits())
    events += edits()
    deployment.wait_drained(timeout=240)
    assert embed.alive()
    assert sink.alive()
    wait_for(lambda: embed.readyz() == sink.readyz() == 200, 60, "both daemons ready again")
    assert embed.stop() == 0
    assert sink.stop() == 0
    assert deployment.points() == deployment.expected(events)


def test_topics_create_is_idempotent(deployment):
    """`embedstream topics create` succeeds twice and names the three topics."""
    cli = [sys.executable, "-m", "pipeline.cli", "topics", "create"]
    for _ in range(2):
        result = subprocess.run(
            cli, capture_output=True, text=True, cwd=REPO, env=deployment.env, timeout=120
        )
        assert result.returncode == 0, result.stderr
    for topic in (deployment.topics.changes, deployment.topics.vectors("docs", 1), deployment.topics.dlq):
        assert topic in result.stdout


def test_poison_events_land_in_the_dlq_and_later_events_are_indexed(tmp_path, kafka_settings, tiny_model):
    """Invalid JSON, unknown schema version, oversized text: DLQ with reasons; the rest flows."""
    deployment = KafkaPipeline(tmp_path, kafka_settings, tiny_model, EMBEDSTREAM_LIMITS__MAX_DOC_BYTES="3000")
    try:
        embed, sink = deployment.start("embed"), deployment.start("sink")
        good = initial_documents()[:3]
        future = json.loads(good[0].to_bytes())
        future.update(schema_version=99, doc_id="from-the-future")
        huge = ChangeEvent(source="kt", doc_id="huge", op="upsert", text="word " * 2000, version=1)
        deployment.produce_raw(
            [
                ("kt/garbage", b"{not json"),
                ("kt/from-the-future", json.dumps(future).encode()),
                ("kt/huge", huge.to_bytes()),
            ]
        )  # fmt: skip
        deployment.produce(good)
        deployment.wait_drained()
        assert embed.stop() == 0
        assert sink.stop() == 0
        assert deployment.points() == deployment.expected(good)

        cli = [sys.executable, "-m", "pipeline.cli", "dlq", "list", "--json"]
        listed = subprocess.run(
            cli, capture_output=True, text=True, cwd=REPO, env=deployment.env, timeout=120
        )
        assert listed.returncode == 0, listed.stderr
        letters = {letter["key"]: letter for letter in json.loads(listed.stdout)}
        assert letters["kt/garbage"]["reason"] == "invalid_event"
        assert "schema_version" in letters["kt/from-the-future"]["message"]
        assert letters["kt/huge"]["reason"] == "too_large"
        assert letters["kt/huge"]["original_topic"] == deployment.topics.changes
        assert letters["kt/huge"]["stage"] == "embed"

        replay = [sys.executable, "-m", "pipeline.cli", "dlq", "replay", "--reason", "too_large", "--dry-run"]
        replayed = subprocess.run(
            replay, capture_output=True, text=True, cwd=REPO, env=deployment.env, timeout=120
        )
        assert "would replay 1 events" in replayed.stdout
    finally:
        deployment.close()
