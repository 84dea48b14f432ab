"""A Qdrant cluster keeps the index whole while a peer dies: 3 peers, 3 shards, 2 replicas.

The index is written through the real stages (:class:`EmbeddedPipeline` with
``store.url`` set: embed, then the sink into a :class:`ServerStore` made by
``open_store``), its layout set by the ``EMBEDSTREAM_STORE__*`` variables a deployment
would set. While a stream of edits is indexed, the cluster's Raft leader is killed with
SIGKILL and later restarted on its ports and storage; another thread searches and
counts through the alias all along. Qdrant guarantees, with ``replication_factor=2``
and ``write_consistency_factor=1``: every search answers (a replica that does not
answer is skipped), every write is acknowledged once the live replica has it and
consensus has marked the dead one, and the restarted peer catches up by shard
transfer. At the end the index equals the corpus exactly, and every replica of every
shard holds the same points (a read with consistency ``all`` returns them all).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from pipeline.config.settings import Settings
from pipeline.core.errors import ConfigError, EmbedstreamError
from pipeline.core.events import ChangeEvent
from pipeline.observability import NullObserver
from pipeline.runtime.adapters import make_chunker
from pipeline.runtime.embedded import EmbeddedPipeline
from pipeline.store import SearchOptions
from pipeline.store.server import ServerStore
from pipeline.versions.spec import IndexVersion, live_version
from tests.groundtruth import assert_index_equals, expected_chunks, paragraphs
from tests.qdrant_fixtures import QdrantCluster

SHARDS, REPLICAS, WRITE_CONSISTENCY = 3, 2, 1
LAYOUT_ENV = {
    "EMBEDSTREAM_STORE__SHARD_NUMBER": str(SHARDS),
    "EMBEDSTREAM_STORE__REPLICATION_FACTOR": str(REPLICAS),
    "EMBEDSTREAM_STORE__WRITE_CONSISTENCY_FACTOR": str(WRITE_CONSISTENCY),
}
SOURCE = "t"
TOPICS = ("cats", "dogs", "ships", "trains", "rivers", "clouds", "stones", "bread", "lamps", "roads")


class Corpus:
    """The documents' current state (the ground truth) and the events that made it."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.texts: dict[str, str] = {}
        self.versions: dict[str, int] = {}
        self.clock = 0

    def _event(self, doc_id: str, text: str | None) -> ChangeEvent:
        self.clock += 1
        if text is None:
            self.texts.pop(doc_id, None)
            self.versions.pop(doc_id, None)
        else:
            self.texts[doc_id] = text
            self.versions[doc_id] = self.clock
        op = "upsert" if text is not None else "delete"
        return ChangeEvent(source=SOURCE, doc_id=doc_id, op=op, text=text, version=self.clock)

    def _text(self, doc_id: str) -> str:
        topic = self.rng.choice(TOPICS)
        return f"# {doc_id} {self.clock}\n\n" + paragraphs(f"{topic} {self.clock}", self.rng.randint(1, 6))

    def initial(self, count: int) -> list[ChangeEvent]:
        return [self._event(f"doc-{i:03d}", self._text(f"doc-{i:03d}")) for i in range(count)]

    def edits(self, count: int) -> list[ChangeEvent]:
        """Rewrites, shrinks, deletions, re-additions and new documents."""
        events = []
        for _ in range(count):
            roll = self.rng.random()
            live = sorted(self.texts)
            if roll < 0.15 and live:
                events.append(self._event(self.rng.choice(live), None))
            elif roll < 0.25:
                events.append(self._event(f"doc-{self.rng.randint(0, 120):03d}", self._text("new")))
            elif live:
                events.append(self._event(self.rng.choice(live), self._text("edit")))
        return events


class Searcher(threading.Thread):
    """Searches and counts through the alias until stopped; counts answers and failures
    per phase of the test (``phase`` is set by the test's thread)."""

    def __init__(self, settings: Settings, vectors: list[list[float]]) -> None:
        super().__init__(name="cluster-searcher", daemon=True)
        self.store = ServerStore.from_settings(settings.store)
        self.alias = settings.index.name
        self.vectors = vectors
        self.phase = "healthy"
        self.answered: dict[str, int] = {}
        self.failed: dict[str, list[str]] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            for vector in self.vectors:
                phase = self.phase
                try:
                    self.store.search(self.alias, vector, SearchOptions(limit=5))
                    self.store.count(self.alias)
                except EmbedstreamError as exc:
                    self.failed.setdefault(phase, []).append(f"{type(exc).__name__}: {exc}")
                else:
                    self.answered[phase] = self.answered.get(phase, 0) + 1
            time.sleep(0.01)

    def close(self) -> None:
        self.stopping.set()
        self.join(timeout=30)
        self.store.close()


class WriteFaults(NullObserver):
    """The transient faults the pipeline's workers retried (each retry reports one)."""

    def __init__(self) -> None:
        self.faults: list[tuple[str, str]] = []

    def error(self, stage: str, kind: str) -> None:
        self.faults.append((stage, kind))


@dataclass(frozen=True)
class Roles:
    """Peer ``client`` serves the pipeline and the searches; peer ``victim`` (the Raft
    leader, so that consensus must fail over too) is killed; indexes into ``peers``."""

    client: int
    victim: int
    victim_id: int  # the cluster's id of the victim


@pytest.fixture
def roles(qdrant_cluster: QdrantCluster) -> Roles:
    info = qdrant_cluster.peers[0].get("/cluster")
    assert info is not None
    leader = int(info["raft_info"]["leader"])
    ids = [qdrant_cluster.peer_id(i) for i in range(len(qdrant_cluster.peers))]
    victim = ids.index(leader)
    return Roles(client=next(i for i in range(len(ids)) if i != victim), victim=victim, victim_id=leader)


@pytest.fixture
def settings(
    monkeypatch: pytest.MonkeyPatch, tiny_settings: Settings, qdrant_cluster: QdrantCluster, roles: Roles
) -> Settings:
    """The tiny model's settings on the cluster, its layout from the environment."""
    for name, value in LAYOUT_ENV.items():
        monkeypatch.setenv(name, value)
    return Settings.load(
        state_dir=tiny_settings.state_dir,
        model=tiny_settings.model.model_dump(),
        chunking=tiny_settings.chunking.model_dump(),
        limits=tiny_settings.limits.model_dump(),
        store={"url": qdrant_cluster.peers[roles.client].url},
    )


@pytest.fixture
def pipeline(settings: Settings) -> Iterator[tuple[EmbeddedPipeline, WriteFaults]]:
    faults = WriteFaults()
    pipe = EmbeddedPipeline(settings, observer=faults)
    try:
        yield pipe, faults
    finally:
        pipe.close()


def scroll_all(client: QdrantClient, collection: str, consistency: qm.ReadConsistencyType | None) -> dict:
    """point id -> payload of every point, read with ``consistency`` (None: the default)."""
    found: dict = {}
    offset = None
    while True:
        records, offset = client.scroll(
            collection, limit=1000, offset=offset, with_payload=True, consistency=consistency
        )
        found.update({str(r.id): r.payload for r in records})
        if offset is None:
            return found


def assert_layout(cluster: QdrantCluster, version: IndexVersion) -> None:
    """Both collections of the version were created with the settings' layout."""
    for collection in (version.collection, version.docs_collection):
        info = cluster.peers[0].get(f"/collections/{collection}")
        assert info is not None
        params = info["config"]["params"]
        assert (params["shard_number"], params["replication_factor"], params["write_consistency_factor"]) == (
            SHARDS,
            REPLICAS,
            WRITE_CONSISTENCY,
        )
        shards = cluster.replicas(collection)
        assert sorted(shards) == list(range(SHARDS))
        assert all(len(peers) == REPLICAS for peers in shards.values())


def test_layout_comes_from_the_environment_and_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    """The three layout settings are read from EMBEDSTREAM_STORE__*, unset by default, at
    least 1, and a write consistency above the replication factor is refused."""
    assert Settings.load().store.shard_number is None
    for name, value in LAYOUT_ENV.items():
        monkeypatch.setenv(name, value)
    store = Settings.load().store
    assert (store.shard_number, store.replication_factor, store.write_consistency_factor) == (3, 2, 1)
    monkeypatch.setenv("EMBEDSTREAM_STORE__SHARD_NUMBER", "0")
    with pytest.raises(ConfigError, match="shard_number"):
        Settings.load()
    monkeypatch.setenv("EMBEDSTREAM_STORE__SHARD_NUMBER", "3")
    monkeypatch.setenv("EMBEDSTREAM_STORE__WRITE_CONSISTENCY_FACTOR", "3")
    with pytest.raises(ConfigError, match=r"write_consistency_factor.*replication_factor=2"):
        Settings.load()


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_index_stays_exact_and_searchable_while_a_peer_is_killed(qdrant_cluster, roles, settings, pipeline):
    cluster = qdrant_cluster
    pipe, faults = pipeline
    started = time.monotonic()
    assert (settings.store.shard_number, settings.store.replication_factor) == (SHARDS, REPLICAS)
    corpus = Corpus(seed=7)
    pipe.process(corpus.initial(40))
    version = live_version(pipe.store, settings.index.name)
    assert version is not None
    assert_layout(cluster, version)
    assert faults.faults == []

    vectors = [[float(x) for x in row] for row in pipe.encoder.encode_queries(["cats", "ships", "bread"])]
    searcher = Searcher(settings, vectors)
    searcher.start()
    try:
        for round_ in range(8):
            if round_ == 2:
                cluster.kill(roles.victim)
                searcher.phase = "peer down"
            if round_ == 5:
                # The writes meanwhile reached every shard: each replica on the dead peer is
                # marked Dead (by consensus, before the write was acknowledged).
                seen = cluster.replicas(version.collection, roles.client)
                states = [peers.get(roles.victim_id) for peers in seen.values()]
                assert {s for s in states if s is not None} == {"Dead"}, states
                searcher.phase = "restarting"
                cluster.restart(roles.victim)
                searcher.phase = "recovering"
            pipe.process(corpus.edits(10))
            time.sleep(0.3)  # searches meanwhile, in every phase
        for collection in (version.collection, version.docs_collection):
            cluster.wait_replicas_active(collection, timeout_s=30)
        searcher.phase = "recovered"
        time.sleep(0.3)
    finally:
        searcher.close()

    report = {
        "answered": searcher.answered,
        "failed": {phase: len(errors) for phase, errors in searcher.failed.items()},
        "write retries": len(faults.faults),
        "seconds": round(time.monotonic() - started, 1),
    }
    print(f"cluster outage: {report}")
    assert searcher.answered.get("peer down", 0) > 0, report
    assert searcher.failed == {}, report
    assert faults.faults == [], report
    assert pipe.dead_letters() == []

    # Nothing lost: each document's point ids, chunk texts and vectors, and its state.
    expected = expected_chunks(corpus.texts, make_chunker(pipe.encoder, settings), SOURCE)
    assert_index_equals(pipe.store, version, expected, pipe.encoder)
    assert pipe.indexed(SOURCE) == corpus.versions

    # Every replica agrees: a read with consistency "all" keeps only points equal on all.
    client = QdrantClient(url=cluster.peers[roles.victim].url)  # served by the restarted peer
    try:
        for collection in (version.collection, version.docs_collection):
            everywhere = scroll_all(client, collection, qm.ReadConsistencyType.ALL)
            assert everywhere == scroll_all(client, collection, None)
        assert len(scroll_all(client, version.collection, qm.ReadConsistencyType.ALL)) == sum(
            len(chunks) for chunks in expected.values()
        )
    finally:
        client.close()
