"""The Kafka deployment on a 3-broker KRaft cluster: brokers die, nothing is lost or duplicated.

Topics have replication 3 and ``min.insync.replicas`` 2 (``kafka.replication``,
``kafka.min_insync_replicas``); producers send with acks=all and idempotence. During a
backfill of a folder with edits, the leader of the changes topic's partitions and then the
active controller (the KRaft metadata quorum's leader) are killed with SIGKILL and restarted;
at the end the index equals the folder exactly: ids, texts and vectors.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from pipeline.config.settings import KafkaSettings
from pipeline.core.hashing import normalize_text
from pipeline.store.edge import EdgeStore
from pipeline.versions.spec import read_version
from tests.e2e.kafka_harness import Daemon, KafkaPipeline, wait_for
from tests.groundtruth import assert_index_equals, expected_chunks, paragraphs, text_files

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(300)]

TOPICS = ["harbours", "lighthouses", "glaciers", "orchards", "violins", "comets",
          "bridges", "deserts", "rivers", "forests", "canals", "islands"]  # fmt: skip
ALL_NODES = [1, 2, 3]


class Timeline:
    """What happened when, printed as it happens (shown with ``-s`` and on failure)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self, what: str) -> None:
        line = f"{time.monotonic() - self.t0:6.1f}s {what}"
        print(line, flush=True)


def topic_configs(bootstrap: str, topic: str) -> dict[str, str]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","))
    try:
        found = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all")
    finally:
        admin.close()
    return {name: str(entry["value"]) for name, entry in found["topic"][topic].items()}


def in_sync(cluster: Any, topics: Iterable[str]) -> bool:
    return all(p["isr"] == ALL_NODES for topic in topics for p in cluster.partitions(topic).values())


def main_leader(cluster: Any, topic: str) -> int:
    """The node leading most of ``topic``'s partitions (partition 0's leader on a tie)."""
    partitions = cluster.partitions(topic)
    counts = Counter(p["leader"] for p in partitions.values())
    most = max(counts.values())
    tied = {node for node, count in counts.items() if count == most}
    return partitions[0]["leader"] if partitions[0]["leader"] in tied else min(tied)


def test_leader_and_controller_kill_9_on_a_3_broker_cluster_loses_and_duplicates_nothing(
    tmp_path: Path, kafka_cluster: Any, tiny_model: Path
) -> None:
    log = Timeline()
    settings = KafkaSettings(
        bootstrap=kafka_cluster.bootstrap,
        topic_prefix=f"c{uuid4().hex[:8]}",
        partitions=3,
        replication=3,
        min_insync_replicas=2,
        batch_max_wait_ms=100,
    )
    deployment = KafkaPipeline(
        tmp_path, settings, tiny_model,
        EMBEDSTREAM_KAFKA__REPLICATION="3", EMBEDSTREAM_KAFKA__MIN_INSYNC_REPLICAS="2",
    )  # fmt: skip
    try:
        _run(deployment, kafka_cluster, tmp_path / "docs", log)
    finally:
        deployment.close()
        for node_id in ALL_NODES:  # the next test of the module gets the whole cluster
            if not kafka_cluster.node(node_id).is_running():
                kafka_cluster.restart(node_id)


def _run(deployment: KafkaPipeline, cluster: Any, docs: Path, log: Timeline) -> None:
    changes, vectors = deployment.topics.changes, deployment.topics.vectors("docs", 1)
    deployment.create_topics()
    for topic in (changes, vectors, deployment.topics.dlq, deployment.topics.versions):
        assert {p["replicas"] == ALL_NODES for p in cluster.partitions(topic).values()} == {True}, topic
        assert topic_configs(cluster.bootstrap, topic)["min.insync.replicas"] == "2", topic

    written: list[str] = []  # every text a file ever had: the chunks that may be encoded

    def write(name: str, text: str) -> None:
        (docs / name).write_text(text, encoding="utf-8")
        written.append(text)

    docs.mkdir()
    for i, topic in enumerate(TOPICS):
        write(f"{topic}.md", paragraphs(topic, 2 + i % 4))
    published = len(TOPICS)  # changes the source must have published so far, at least

    source = deployment.start("source", "fs", str(docs), "--interval", "0.5")
    embed, sink = deployment.start("embed"), deployment.start("sink")
    daemons = (source, embed, sink)

    def published_at_least(count: int, what: str) -> None:
        wait_for(lambda: _alive(daemons) and source.emitted() >= count, 90, what)
        log(f"source: {source.emitted()} changes acknowledged ({what})")

    published_at_least(published, "the first pass")

    # Edits while the backfill flows: one change per file, each after the last pass saw the one before.
    def edit_round(round_no: int, names: list[str]) -> None:
        nonlocal published
        for name in names:
            path = docs / name
            if name.startswith("delete:"):
                (docs / name.removeprefix("delete:")).unlink()
            elif path.exists():
                write(name, paragraphs(f"{path.stem} revised in round {round_no}", 1 + round_no))
            else:
                write(name, paragraphs(f"{path.stem}, new in round {round_no}", 3))
        published += len(names)
        published_at_least(published, f"edit round {round_no}: {names}")

    edit_round(1, ["harbours.md", "delete:glaciers.md", "new-1.md"])

    # 1. SIGKILL the node leading the changes topic's partitions, edits while it is down.
    before = cluster.partitions(changes)
    victim = main_leader(cluster, changes)
    cluster.kill(victim)
    killed_at = time.monotonic()
    led = sorted(p for p, d in before.items() if d["leader"] == victim)
    log(f"kill -9 node {victim}, leader of {changes} partitions {led} (leaders {_leaders(before)}); "
        f"embed has encoded {embed.encoded()} chunks so far")  # fmt: skip
    edit_round(2, ["lighthouses.md", "delete:orchards.md", "new-2.md"])
    wait_for(lambda: victim not in _leaders(cluster.partitions(changes)).values(), 60, "new leaders")
    log(f"changes leaders now {_leaders(cluster.partitions(changes))}, "
        f"isr {_isr(cluster.partitions(changes))}")  # fmt: skip
    cluster.restart(victim)
    log(f"node {victim} restarted ({time.monotonic() - killed_at:.1f}s after the kill)")
    wait_for(lambda: in_sync(cluster, (changes, vectors)), 60, f"node {victim} back in every ISR")
    log(f"node {victim} back in the ISR of every partition")

    # 2. SIGKILL the active controller (the KRaft metadata quorum's leader), edits meanwhile.
    controller = cluster.active_controller()
    before = cluster.partitions(changes)
    cluster.kill(controller)
    killed_at = time.monotonic()
    log(f"kill -9 node {controller}, the active controller (changes leaders {_leaders(before)}); "
        f"embed has encoded {embed.encoded()} chunks so far")  # fmt: skip
    edit_round(3, ["violins.md", "comets.md", "delete:bridges.md", "new-3.md"])
    wait_for(lambda: cluster.active_controller() not in (-1, controller), 60, "a new active controller")
    log(f"active controller now node {cluster.active_controller()}, changes leaders "
        f"{_leaders(cluster.partitions(changes))}")  # fmt: skip
    cluster.restart(controller)
    log(f"node {controller} restarted ({time.monotonic() - killed_at:.1f}s after the kill)")
    edit_round(4, ["deserts.md", "new-1.md"])

    deployment.produced = source.emitted()
    deployment.wait_drained(timeout=120)
    log("drained: every change embedded and every vector sunk")
    for daemon in daemons:
        assert daemon.stop() == 0, daemon.output()[-3000:]
    log("daemons stopped (exit 0)")

    store = EdgeStore(deployment.settings.qdrant_dir)
    try:
        version = read_version(store, "docs__v1")
        assert version is not None, "the sink never created docs__v1"
        corpus = expected_chunks(text_files(docs), deployment.chunker)
        assert_index_equals(store, version, corpus, deployment.encoder)
    finally:
        store.close()
    log(f"index equals the folder: {len(corpus)} documents, {sum(map(len, corpus.values()))} points")

    # Nothing done twice either: no chunk encoded twice (cached chunks are not re-encoded).
    encodable = {c.hash for text in written for c in deployment.chunker.chunk(normalize_text(text))}
    assert embed.encoded() <= len(encodable)
    records = deployment._bus.read_all(changes)  # the test's own bus
    copies = Counter((r.key, r.value) for r in records)
    log(f"encoded {embed.encoded()} chunks of {len(encodable)} ever written; changes topic: "
        f"{len(records)} records, {sum(n - 1 for n in copies.values())} resent copies")  # fmt: skip


def _alive(daemons: Iterable[Daemon]) -> bool:
    for daemon in daemons:
        assert daemon.alive(), f"{daemon.name} exited {daemon.process.returncode}:\n{daemon.output()[-3000:]}"
    return True


def _leaders(partitions: dict[int, dict[str, Any]]) -> dict[int, int]:
    return {p: d["leader"] for p, d in sorted(partitions.items())}


def _isr(partitions: dict[int, dict[str, Any]]) -> dict[int, list[int]]:
    return {p: d["isr"] for p, d in sorted(partitions.items())}
