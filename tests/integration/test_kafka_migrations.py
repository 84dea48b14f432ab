"""Migrations over a real Kafka broker: versions registered in the control topic, a new
version's groups backfilling from offset 0, a rebuild from the vectors topic, gates read from
consumer-group lag. Workers run in-process (the same stage and worker code as the daemons)
and share one embedded store, as one sink process would.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pipeline.bus.kafka import KafkaBus
from pipeline.config.settings import KafkaSettings, Settings
from pipeline.core.errors import ConfigError
from pipeline.core.events import ChangeEvent
from pipeline.core.hashing import normalize_text
from pipeline.encoding.transformer import SentenceTransformerEncoder
from pipeline.observability import NullObserver
from pipeline.runtime import Runtime
from pipeline.runtime.admin import (
    Admin,
    StorageChoice,
    gc,
    promote_version,
    rollback_version,
    start,
    states,
)
from pipeline.runtime.registry import embed_version, read_versions, sink_planner
from pipeline.stages.worker import Worker
from pipeline.store.edge import EdgeStore
from pipeline.versions.spec import find_version, live_version
from tests.groundtruth import assert_index_equals, expected_chunks
from tests.integration.test_embedded_pipeline import CountingEncoder

pytestmark = pytest.mark.kafka

TOPICS = ["harbours", "glaciers", "orchards", "lighthouses", "deserts", "bridges"]


def document(doc_id: str, version: int, topic: str, paragraphs: int = 3) -> ChangeEvent:
    text = "\n\n".join(
        f"Paragraph {i} of {doc_id} is about {topic}. It describes aspect {i} of {topic} in plain "
        f"words so that chunks carry real tokens, version {version}."
        for i in range(paragraphs)
    )
    return ChangeEvent(source="kt", doc_id=doc_id, op="upsert", text=text, version=version)


@dataclass
class Deployment:
    """One index over the test broker: a runtime (model A) sharing the store, and the corpus."""

    settings: Settings
    bus: KafkaBus
    runtime: Runtime
    encoder: CountingEncoder
    corpus: dict[str, ChangeEvent]
    workers: list[tuple[Worker, str, str]]  # worker, group, topic
    clients: list[Any] = field(default_factory=list)  # consumers and producers to close

    def produce(self, events: Sequence[ChangeEvent]) -> None:
        from pipeline.bus import Outgoing

        producer = self.bus.producer()
        self.clients.append(producer)
        producer.send([Outgoing(self.runtime.topics.changes, e.key, e.to_bytes()) for e in events])
        for event in events:
            self.corpus[event.key] = event

    def worker(self, runtime: Runtime, stage: object, group: str, topic: str) -> Worker:
        consumer, producer = self.bus.consumer(group, [topic]), self.bus.producer()
        self.clients += [consumer, producer]
        worker = runtime.worker(stage, consumer, producer, poll_timeout_s=0.5)  # type: ignore[arg-type]
        self.workers.append((worker, group, topic))
        return worker

    def drain(self, timeout: float = 120) -> None:
        """Run every worker until all their groups have committed everything."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for worker, _, _ in self.workers:
                worker.run_batch()
            if all(not sum(self.bus.group_lag(g, [t]).values()) for _, g, t in self.workers):
                return
        raise AssertionError("the workers did not drain in time")

    def expected(self, runtime: Runtime, number: int) -> dict[str, dict[str, str]]:
        version = find_version(runtime.store, "docs", number)
        assert version is not None
        chunker = runtime.encoders.chunker_for(version)
        texts = {e.doc_id: normalize_text(e.text or "") for e in self.corpus.values() if e.op == "upsert"}
        return expected_chunks(texts, chunker, source="kt")

    def assert_exact(self, runtime: Runtime, number: int) -> None:
        version = find_version(runtime.store, "docs", number)
        assert version is not None
        encoder = runtime.encoders.for_version(version)
        assert_index_equals(runtime.store, version, self.expected(runtime, number), encoder)


@pytest.fixture
def eval_files(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "queries.jsonl", tmp_path / "qrels.tsv"


@pytest.fixture
def deployment(
    tmp_path: Path, tiny_model: Path, kafka_bus: KafkaBus, kafka_settings: KafkaSettings, eval_files
) -> Iterator[Deployment]:
    queries, qrels = eval_files
    settings = Settings.load(
        state_dir=tmp_path / "state",
        model={"name": str(tiny_model)},
        chunking={"max_tokens": 48, "overlap_tokens": 8},
        kafka=kafka_settings.model_dump(),
        index={"quantization": "none", "eval_queries": str(queries), "eval_qrels": str(qrels)},
    )
    encoder = CountingEncoder(SentenceTransformerEncoder(settings.model, state_dir=settings.state_dir))
    store = EdgeStore(settings.qdrant_dir)
    runtime = Runtime(settings, NullObserver(), encoder=encoder, store=store)
    kafka_bus.ensure_topics(runtime.topic_specs(1))
    embed_version(runtime, kafka_bus, 1)  # what `embedstream embed` does first: register v1
    deployment = Deployment(settings, kafka_bus, runtime, encoder, {}, [])
    topics = runtime.topics
    deployment.worker(runtime, runtime.embed_stage(1), runtime.group_id("embed", 1), topics.changes)
    sink = runtime.sink_stage(1, sink_planner(runtime, kafka_bus, 1))
    deployment.worker(runtime, sink, runtime.group_id("sink", 1), topics.vectors("docs", 1))
    deployment.produce([document(f"d{i}", 1, topic) for i, topic in enumerate(TOPICS)])
    deployment.drain()
    yield deployment
    for client in deployment.clients:  # else their network threads outlive the test
        client.close()
    store.close()


def exact_chunk_queries(deployment: Deployment, eval_files: tuple[Path, Path]) -> None:
    """Each document's first chunk as a query for it: every complete version scores 1.0."""
    version = find_version(deployment.runtime.store, "docs", 1)
    assert version is not None
    chunker = deployment.runtime.encoders.chunker_for(version)
    queries, qrels = eval_files
    lines, judgments = [], ["query-id\tcorpus-id\tscore"]
    for event in deployment.corpus.values():
        first = chunker.chunk(normalize_text(event.text or ""))[0].text
        lines.append(json.dumps({"_id": event.doc_id, "text": first}))
        judgments.append(f"{event.doc_id}\t{event.doc_id}\t1")
    queries.write_text("\n".join(lines) + "\n")
    qrels.write_text("\n".join(judgments) + "\n")


def test_an_int8_rebuild_from_the_vectors_topic_encodes_nothing(deployment, eval_files):
    """A new int8 version of the same model is filled by its sink group from v1's compacted
    vectors topic: 0 chunks encoded, exact with vectors; it follows a later edit through v1's
    embed workers, and promote's gates (lag from the groups, counts, eval) let it through."""
    exact_chunk_queries(deployment, eval_files)
    runtime, bus = deployment.runtime, deployment.bus
    admin = Admin(deployment.settings, runtime, bus)
    spec = start(admin, StorageChoice(quantization="int8"))
    assert (spec.version, spec.vectors_from, spec.quantization) == (2, 1, "int8")
    assert read_versions(bus, runtime.topics, "docs")[2] == spec
    encoded = len(deployment.encoder.encoded)
    deployment.worker(
        runtime, runtime.sink_stage(2), runtime.group_id("sink", 2), runtime.topics.vectors("docs", 1)
    )
    deployment.drain()
    assert len(deployment.encoder.encoded) == encoded  # the rebuild encoded 0 chunks
    deployment.assert_exact(runtime, 2)

    deployment.produce([document("d1", 2, "canals", 4)])
    deployment.drain()
    deployment.assert_exact(runtime, 2)
    swap = promote_version(admin, None, force=False)
    assert (swap.before.version, swap.after.version) == (1, 2)  # type: ignore[union-attr]
    assert live_version(runtime.store, "docs").version == 2  # type: ignore[union-attr]

    gc(without_retention(admin), [], dry_run=False)
    assert find_version(runtime.store, "docs", 1) is None  # v1's collection is gone, but v2
    assert 1 in read_versions(bus, runtime.topics, "docs")  # reads its vectors: its embed
    assert runtime.topics.vectors("docs", 1) in bus.list_topics()  # workers and topic stay


def test_a_model_migration_backfills_from_the_changes_topic_while_edits_arrive(
    deployment, eval_files, other_tiny_model
):
    """v2 (model B) registered by `migrate start`; its embed and sink groups read the compacted
    changes topic from offset 0 while edits keep arriving; a model-A worker is refused for v2;
    promote waits for lag 0 and the same document count; rollback returns to A, also current."""
    runtime, bus = deployment.runtime, deployment.bus
    admin = Admin(deployment.settings, runtime, bus)
    spec = start(admin, StorageChoice(model=str(other_tiny_model)))
    assert (spec.version, spec.vectors_from) == (2, 0)
    with pytest.raises(ConfigError, match="this embed worker cannot write docs@v2"):
        embed_version(runtime, bus, 2)  # a model-A worker started with --version 2
    settings_b = deployment.settings.model_copy(
        update={"model": deployment.settings.model.model_copy(update={"name": str(other_tiny_model)})}
    )
    runtime_b = Runtime(settings_b, NullObserver(), store=runtime.store)
    assert embed_version(runtime_b, bus, 2) == spec  # a model-B worker may
    topics = runtime.topics
    embed_b = deployment.worker(
        runtime_b, runtime_b.embed_stage(2), runtime.group_id("embed", 2), topics.changes
    )
    deployment.worker(
        runtime_b, runtime_b.sink_stage(2), runtime.group_id("sink", 2), topics.vectors("docs", 2)
    )
    embed_b.run_batch()  # part of the backfill, then live edits
    deployment.produce([document("d0", 2, "canals", 5), document("d6", 1, "meadows")])
    deployment.produce([ChangeEvent(source="kt", doc_id="d3", op="delete", version=2)])
    del deployment.corpus["kt/d3"]
    deployment.drain()
    candidate = next(s for s in states(admin) if s.version.version == 2)
    assert (candidate.lag, candidate.documents) == (0, 6)

    exact_chunk_queries(deployment, eval_files)  # judged on the corpus as it is now
    promote_version(admin, 2, force=False)
    deployment.produce([document("d2", 3, "tundra")])
    deployment.drain()
    deployment.assert_exact(runtime_b, 2)
    rollback_version(admin, None)
    assert live_version(runtime.store, "docs").version == 1  # type: ignore[union-attr]
    deployment.assert_exact(runtime, 1)

    deployment.workers = deployment.workers[:2]  # v2's daemons stopped before gc
    gc(without_retention(admin), [], dry_run=False)
    assert find_version(runtime.store, "docs", 2) is None
    assert 2 not in read_versions(bus, runtime.topics, "docs")
    assert runtime.topics.vectors("docs", 2) not in bus.list_topics()


def without_retention(admin: Admin) -> Admin:
    index = admin.settings.index.model_copy(update={"gc_retention_hours": 0.0})
    return Admin(admin.settings.model_copy(update={"index": index}), admin.runtime, admin.kafka)


def test_the_cli_registers_a_new_version_in_the_control_topic(
    tmp_path, tiny_model, kafka_bus, kafka_settings
):
    """With Kafka configured (--bootstrap), `migrate start` writes the spec to the control topic
    as well as the store, `index-versions` lists it, and `migrate status` reads the groups' lag."""
    from typer.testing import CliRunner

    from pipeline.cli import app
    from pipeline.core.names import Topics
    from pipeline.runtime.registry import publish_version
    from pipeline.versions.spec import IndexVersion, create_version

    settings = Settings.load(state_dir=tmp_path / "state", model={"name": str(tiny_model)})
    encoder = SentenceTransformerEncoder(settings.model)
    v1 = IndexVersion.plan(
        settings.index, 1, encoder.fingerprint, 32, model=settings.model, chunking=(126, 24)
    )
    store = EdgeStore(settings.qdrant_dir)
    create_version(store, v1)
    store.close()
    topics = Topics(kafka_settings.topic_prefix)
    kafka_bus.ensure_topics(Runtime(settings, NullObserver()).topic_specs(1))
    publish_version(kafka_bus, topics, v1)
    env = {
        "EMBEDSTREAM_STATE_DIR": str(tmp_path / "state"),
        "EMBEDSTREAM_MODEL__NAME": str(tiny_model),
        "EMBEDSTREAM_KAFKA__TOPIC_PREFIX": kafka_settings.topic_prefix,
    }

    def cli(*args: str) -> str:
        result = CliRunner().invoke(app, [*args, "--bootstrap", kafka_settings.bootstrap], env=env)
        assert result.exit_code == 0, result.output
        return result.stdout

    started = cli("migrate", "start", "--quantization", "binary")
    assert "reads the vectors of v1" in started
    assert "embedstream sink --index docs --version 2" in started
    assert read_versions(kafka_bus, topics, "docs")[2].quantization == "binary"
    listed = json.loads(cli("index-versions", "--json"))
    assert [(v["version"], v["state"], v["vectors_from"]) for v in listed] == [
        (1, "live", "-"),
        (2, "building", "v1"),
    ]
    status = json.loads(cli("migrate", "status", "--json", "--no-eval"))
    assert [row["lag"] for row in status] == [0, 0]  # nothing produced yet: nothing to catch up
