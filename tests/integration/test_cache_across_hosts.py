"""The embedding cache shared by every host (``cache.shared``), on a real Qdrant server.

Each "host" is a state dir of its own (its own SQLite cache) and an embedded pipeline,
all pointing at the session's server (:mod:`tests.qdrant_fixtures`): DESIGN §3 invariant 4
across hosts. Every test names its indexes and cache collections uniquely, since the
server is shared by the session.
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from connectors.filesystem import FilesystemSource
from pipeline.config.settings import Settings
from pipeline.core.errors import ConfigError
from pipeline.encoding.cache import SqliteEmbeddingCache
from pipeline.encoding.shared_cache import SharedEmbeddingCache, TieredEmbeddingCache
from pipeline.encoding.transformer import SentenceTransformerEncoder
from pipeline.runtime.adapters import _ServerCacheCollections, make_chunker
from pipeline.runtime.embedded import EmbeddedPipeline
from pipeline.runtime.local import IndexSummary, index_source
from pipeline.store import CollectionSpec
from pipeline.store.server import ServerStore
from tests.groundtruth import expected_chunks, paragraphs, text_files
from tests.integration.test_embedded_pipeline import CountingEncoder
from tests.qdrant_fixtures import QdrantEndpoint

# The server's version check runs in a thread of each client; against a port where no
# server listens it warns, which is what these tests are about.
NO_VERSION_WARNING = "ignore:Failed to obtain server version:UserWarning"


@pytest.fixture
def tag(qdrant_server: QdrantEndpoint) -> Iterator[str]:
    """A name unique to the test; its collections are dropped afterwards."""
    name = f"t{uuid.uuid4().hex[:10]}"
    store = qdrant_server.store()
    yield name
    try:
        for collection in store.collections():
            if collection.startswith(name):
                store.drop_collection(collection)
    finally:
        store.close()
        # The session's server may stop right after the last test: no client's version
        # check may still be on its way to it then.
        join_version_checks()


def host_settings(
    tmp_path: Path, host: str, model: Path, url: str, api_key: str | None, tag: str, index: str
) -> Settings:
    return Settings.load(
        state_dir=tmp_path / host,
        model={"name": str(model)},
        chunking={"max_tokens": 64, "overlap_tokens": 8},
        limits={"max_doc_bytes": 20_000, "max_chunks_per_doc": 40},
        index={"name": f"{tag}_{index}"},
        store={"url": url, "api_key": api_key},
        cache={"shared": True, "collection_prefix": f"{tag}_cache"},
    )


class Host:
    """One host: its own state dir (and SQLite cache), the shared server."""

    def __init__(self, settings: Settings, store: ServerStore | None = None) -> None:
        self.settings = settings
        self.encoder = CountingEncoder(SentenceTransformerEncoder(settings.model))
        self.pipe = EmbeddedPipeline(settings, encoder=self.encoder, store=store)

    def index(self, root: Path) -> IndexSummary:
        checkpoint = self.settings.index_home / "checkpoints" / "fs.json"
        return index_source(self.pipe, FilesystemSource(root, checkpoint, name="fs", max_bytes=20_000))

    @property
    def cache(self) -> TieredEmbeddingCache:
        cache = self.pipe.runtime.cache
        assert isinstance(cache, TieredEmbeddingCache)
        return cache

    def close(self) -> None:
        self.pipe.close()


@pytest.fixture
def hosts(tmp_path: Path, qdrant_server: QdrantEndpoint, tag: str) -> Iterator[list[Host]]:
    """Hosts made by the test (closed afterwards)."""
    made: list[Host] = []
    yield made
    for host in made:
        host.close()


def new_host(
    hosts: list[Host],
    tmp_path: Path,
    name: str,
    model: Path,
    endpoint: QdrantEndpoint,
    tag: str,
    index: str,
) -> Host:
    host = Host(host_settings(tmp_path, name, model, endpoint.url, endpoint.api_key, tag, index))
    hosts.append(host)
    return host


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    (root / "guides").mkdir(parents=True)
    (root / "cats.md").write_text("# Cats\n\n" + paragraphs("cats", 10))
    (root / "guides" / "dogs.md").write_text("# Dogs\n\n" + paragraphs("dogs", 6))
    (root / "birds.txt").write_text(paragraphs("birds", 3))
    return root


def test_a_second_host_indexing_the_same_folder_encodes_nothing(
    tmp_path, qdrant_server, tag, tiny_model, docs, hosts
):
    a = new_host(hosts, tmp_path, "host-a", tiny_model, qdrant_server, tag, "a")
    first = a.index(docs)
    assert first.encoded > 10
    b = new_host(hosts, tmp_path, "host-b", tiny_model, qdrant_server, tag, "b")
    second = b.index(docs)
    print(f"host A encoded {first.encoded}, host B encoded {second.encoded}; B {dict(b.cache.counts)}")
    assert second.encoded == 0, "host B re-encoded chunks host A had encoded"
    assert b.encoder.encoded == []
    assert b.cache.counts["shared_hits"] == first.encoded
    # Index "b" is complete, with exactly the vectors of index "a".
    assert second.added == first.added == 3
    a_hits = [(h.doc_id, h.score) for h in a.pipe.search("cats", k=3)]
    assert a_hits == [(h.doc_id, h.score) for h in b.pipe.search("cats", k=3)]
    # B's own file now holds them: its next lookups stay on the host.
    local = SqliteEmbeddingCache(b.settings.cache_path)
    try:
        assert local.count(b.encoder.fingerprint) == first.encoded == len(chunk_texts(b, docs))
    finally:
        local.close()


def chunk_texts(host: Host, root: Path) -> set[str]:
    """The distinct chunk texts of the files under ``root``, as ``host`` cuts them."""
    chunks = expected_chunks(text_files(root), make_chunker(host.encoder, host.settings))
    return {text for points in chunks.values() for text in points.values()}


def test_a_chunk_common_to_documents_on_two_hosts_is_encoded_once(
    tmp_path, qdrant_server, tag, tiny_model, hosts
):
    shared_text = paragraphs("harbours", 4)
    left, right = tmp_path / "left", tmp_path / "right"
    left.mkdir()
    right.mkdir()
    (left / "ports.md").write_text(shared_text)
    (right / "copy-of-ports.md").write_text(shared_text)  # the same text, another document
    (right / "mills.md").write_text(paragraphs("windmills", 3))
    a = new_host(hosts, tmp_path, "host-a", tiny_model, qdrant_server, tag, "a")
    b = new_host(hosts, tmp_path, "host-b", tiny_model, qdrant_server, tag, "b")
    assert a.index(left).encoded > 0
    summary = b.index(right)
    print(f"host A encoded {len(a.encoder.encoded)}, host B encoded {summary.encoded}")
    assert set(a.encoder.encoded) == chunk_texts(a, left)
    assert set(a.encoder.encoded).isdisjoint(b.encoder.encoded), "host B encoded a chunk host A had"
    new = chunk_texts(b, right) - chunk_texts(a, left)  # the windmills
    assert summary.encoded == len(b.encoder.encoded) == len(new) > 0
    assert summary.added == 2


def test_another_model_never_reuses_the_shared_vectors(
    tmp_path, qdrant_server, tag, tiny_model, other_tiny_model, docs, hosts
):
    a = new_host(hosts, tmp_path, "host-a", tiny_model, qdrant_server, tag, "a")
    first = a.index(docs)
    b = new_host(hosts, tmp_path, "host-b", other_tiny_model, qdrant_server, tag, "b")
    assert a.encoder.fingerprint != b.encoder.fingerprint
    second = b.index(docs)
    print(f"host A encoded {first.encoded}, host B (other model) encoded {second.encoded}")
    assert second.encoded == first.encoded  # same tokenizer, same chunks: every one encoded
    assert b.cache.counts["shared_hits"] == 0
    # Both models' vectors now sit side by side in the one 32-dim cache collection.
    store = qdrant_server.store()
    try:
        assert store.count(f"{tag}_cache__32") == first.encoded + second.encoded
    finally:
        store.close()


@pytest.mark.filterwarnings(NO_VERSION_WARNING)
def test_indexing_succeeds_while_the_shared_tier_is_down(
    tmp_path, qdrant_server, tag, tiny_model, docs, hosts, caplog
):
    """The index goes to the live server; the cache's server does not answer."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"  # nothing listens once closed
    settings = host_settings(tmp_path, "host-a", tiny_model, dead, None, tag, "a")
    host = Host(settings, store=qdrant_server.store())
    hosts.append(host)
    with caplog.at_level("WARNING", logger="pipeline.encoding.shared_cache"):
        summary = host.index(docs)
    assert summary.added == 3
    assert summary.encoded > 10
    assert host.cache.counts["shared_cache_read"] >= 1
    assert host.cache.counts["shared_cache_write"] + host.cache.counts["shared_write_skipped"] >= 1
    assert "shared embedding cache lookup failed" in caplog.text
    # The local tier still kept every vector.
    local = SqliteEmbeddingCache(settings.cache_path)
    try:
        assert local.count(host.encoder.fingerprint) == summary.encoded
    finally:
        local.close()
    print(f"encoded with the shared tier down: {summary.encoded}; counts {dict(host.cache.counts)}")
    join_version_checks()


def join_version_checks() -> None:
    """Wait for qdrant-client's version-check threads (each client starts one), so none
    warns after its test, or asks a server that has stopped since."""
    for thread in threading.enumerate():
        if "_check_compatibility" in thread.name:
            thread.join(30)


def test_cache_vectors_round_trip_the_server_bit_for_bit(qdrant_server, tag):
    """Not unit length, and not rescaled: the collection's distance never normalizes."""
    store = qdrant_server.store()
    cache = SharedEmbeddingCache(_ServerCacheCollections(store), f"{tag}_cache")
    try:
        rng = np.random.default_rng(7)
        vectors = {f"h{i}": (rng.normal(size=48) * 5).astype(np.float32) for i in range(300)}
        vectors["tiny"] = np.array([1e-38, -3.4e38, 1.1754944e-38, 0.1] * 12, dtype=np.float32)
        cache.put_many("model@1", vectors)
        cache.put_many("model@1", vectors)  # idempotent: the same points
        assert store.count(f"{tag}_cache__48") == len(vectors)
        fresh = SharedEmbeddingCache(_ServerCacheCollections(qdrant_server.store()), f"{tag}_cache")
        try:
            found = fresh.get_many("model@1", [*vectors, "absent"])
            assert set(found) == set(vectors)
            assert all(found[h].tobytes() == v.tobytes() for h, v in vectors.items())
            assert fresh.get_many("model@2", list(vectors)) == {}
        finally:
            fresh.close()
    finally:
        cache.close()


def test_hosts_creating_the_cache_collection_at_once_all_succeed(qdrant_server, tag):
    name = f"{tag}_cache__16"
    stores = [qdrant_server.store() for _ in range(4)]
    barrier = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def create(store: ServerStore) -> None:
        try:
            barrier.wait()
            store.create_cache_collection(name, 16)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert errors == []
        assert stores[0].collections().count(name) == 1
        stores[0].create_cache_collection(name, 16)  # again: nothing to do
        # A collection of that name that is not a cache (another deployment's): refused.
        stores[0].create_collection(f"{tag}_cache__8", CollectionSpec(dims=16))
        with pytest.raises(ConfigError, match="not an embedding cache of 8 dims"):
            stores[0].create_cache_collection(f"{tag}_cache__8", 8)
    finally:
        for store in stores:
            store.close()
