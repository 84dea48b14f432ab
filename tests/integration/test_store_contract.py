"""One contract for every VectorStore adapter: the embedded engine and qdrant-client.

The server adapter runs twice: against qdrant-client's local mode (``qdrant-client``) and
against a real Qdrant server (``qdrant-server``): the session's ``qdrant_server`` fixture
(:mod:`tests.qdrant_fixtures`) starts one from the shared binary, or uses
``EMBEDSTREAM_TEST_QDRANT_URL`` (and ``EMBEDSTREAM_TEST_QDRANT_API_KEY``) when set.
Collection and alias names carry a suffix unique to the test, and the test's collections
are dropped afterwards, so the server may hold other data.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.errors import ConfigError, StoreRejected
from pipeline.store import CollectionSpec, PointWrite, SearchOptions, Sweep, VectorStore
from pipeline.store.edge import EdgeStore
from pipeline.store.server import ServerStore
from tests.qdrant_fixtures import QdrantEndpoint

SERVER_ADAPTERS = ("qdrant-client", "qdrant-server")


class Names:
    """Collection and alias names unique to one test: ``name("c")`` is ``c_<suffix>``."""

    def __init__(self) -> None:
        self.suffix = uuid.uuid4().hex[:12]

    def __call__(self, base: str) -> str:
        return f"{base}_{self.suffix}"


@pytest.fixture
def name() -> Names:
    return Names()


def ids_in(store: VectorStore, collection: str) -> list[str]:
    return [point_id for point_id, _ in store.scroll(collection)]


def open_store(kind: str, tmp_path: Path, qdrant: QdrantEndpoint | None, **options: int) -> VectorStore:
    """A new adapter of ``kind``; ``options`` go to ServerStore (e.g. max_request_bytes)."""
    if kind == "edge":
        return EdgeStore(tmp_path / "edge")
    if kind == "qdrant-client":
        return ServerStore(location=":memory:", **options)
    assert qdrant is not None
    return qdrant.store(**options)


@pytest.fixture(params=["edge", *SERVER_ADAPTERS])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def qdrant(kind: str, request: pytest.FixtureRequest) -> QdrantEndpoint | None:
    """The session's Qdrant server for the ``qdrant-server`` variant; the others need none."""
    return request.getfixturevalue("qdrant_server") if kind == "qdrant-server" else None


@pytest.fixture
def store(kind: str, tmp_path: Path, qdrant: QdrantEndpoint | None, name: Names) -> Iterator[VectorStore]:
    adapter = open_store(kind, tmp_path, qdrant)
    yield adapter
    if kind == "qdrant-server":  # a shared server: leave only what was there
        for collection in adapter.collections():
            if collection.endswith(name.suffix):
                adapter.drop_collection(collection)
    adapter.close()


def unit(seed: int, dims: int = 8) -> list[float]:
    vector = np.random.default_rng(seed).normal(size=dims)
    return (vector / np.linalg.norm(vector)).tolist()


def points(count: int, doc: str = "a") -> list[PointWrite]:
    return [
        PointWrite(
            str(uuid.uuid5(uuid.NAMESPACE_URL, f"{doc}{i}")), unit(i), {"doc_key": doc, "metadata": {"n": i}}
        )
        for i in range(count)
    ]


@pytest.mark.parametrize("quantization", ["none", "int8", "binary"])
def test_create_upsert_count_and_search_the_nearest(store, name, quantization):
    """Upserted points are counted and the nearest neighbour of a stored vector is itself."""
    store.create_collection(name("c"), CollectionSpec(8, "float16", quantization))
    store.create_collection(name("c"), CollectionSpec(8, "float16", quantization))  # idempotent
    written = points(20)
    store.upsert(name("c"), written)
    store.flush()
    assert store.count(name("c")) == 20
    hits = store.search(name("c"), written[7].vector, SearchOptions(limit=3, oversampling=2.0, rescore=True))
    assert hits[0].id == written[7].id
    assert hits[0].payload["metadata"]["n"] == 7


def test_upsert_is_idempotent_and_delete_removes(store, name):
    """Writing the same ids twice keeps one copy; deleted ids are gone from retrieve and scroll."""
    store.create_collection(name("c"), CollectionSpec(8))
    written = points(5)
    store.upsert(name("c"), written)
    store.upsert(name("c"), written)
    store.delete(name("c"), [written[0].id, written[1].id])
    assert store.count(name("c")) == 3
    assert set(ids_in(store, name("c"))) == {p.id for p in written[2:]}
    assert set(store.retrieve(name("c"), [p.id for p in written])) == {p.id for p in written[2:]}


def test_filters_match_payload_values(store, name):
    """Search and count honour exact-match filters on nested payload keys."""
    store.create_collection(name("c"), CollectionSpec(8))
    store.upsert(name("c"), points(4, "a") + points(3, "b"))
    assert store.count(name("c"), {"doc_key": "b"}) == 3
    hits = store.search(
        name("c"), unit(1), SearchOptions(limit=10, filters={"doc_key": "a", "metadata.n": 2})
    )
    assert [h.payload["metadata"]["n"] for h in hits] == [2]


def test_alias_moves_atomically_between_collections(store, name):
    """set_alias points the alias at one collection, then at another."""
    store.create_collection(name("docs__v1"), CollectionSpec(8))
    store.create_collection(name("docs__v2"), CollectionSpec(8))
    assert store.get_alias(name("docs")) is None
    store.set_alias(name("docs"), name("docs__v1"))
    assert store.get_alias(name("docs")) == name("docs__v1")
    store.set_alias(name("docs"), name("docs__v2"))
    assert store.get_alias(name("docs")) == name("docs__v2")
    assert {name("docs__v1"), name("docs__v2")} <= set(store.collections())


def test_drop_collection_removes_it(store, name):
    """A dropped collection is no longer listed."""
    store.create_collection(name("gone"), CollectionSpec(8))
    store.drop_collection(name("gone"))
    assert name("gone") not in store.collections()


def test_edge_store_data_survives_reopen(tmp_path):
    """The embedded engine's writes are durable across close and reopen (the WAL)."""
    first = EdgeStore(tmp_path / "edge")
    first.create_collection("c", CollectionSpec(8))
    first.upsert("c", points(6))
    first.set_alias("docs", "c")
    first.close()
    second = EdgeStore(tmp_path / "edge")
    try:
        assert second.count("c") == 6
        assert second.get_alias("docs") == "c"
    finally:
        second.close()


def versioned(doc: str, version: int, indices: range) -> list[PointWrite]:
    return [
        PointWrite(
            str(uuid.uuid5(uuid.NAMESPACE_URL, f"{doc}{i}")),
            unit(i),
            {"doc_key": doc, "version": version, "metadata": {"n": i}},
        )
        for i in indices
    ]


def test_guarded_upsert_never_overwrites_a_newer_version(store, name):
    """A guarded write skips points a newer version stored and still inserts new ones."""
    store.create_collection(name("c"), CollectionSpec(8))
    store.upsert(name("c"), versioned("a", 5, range(3)))
    store.upsert(name("c"), versioned("a", 3, range(5)), guarded=True)
    versions = {
        p["metadata"]["n"]: p["version"] for p in store.retrieve(name("c"), ids_in(store, name("c"))).values()
    }
    assert versions == {0: 5, 1: 5, 2: 5, 3: 3, 4: 3}
    store.upsert(name("c"), versioned("a", 5, range(1)) + versioned("a", 7, range(1, 2)), guarded=True)
    versions = {
        p["metadata"]["n"]: p["version"] for p in store.retrieve(name("c"), ids_in(store, name("c"))).values()
    }
    assert versions == {0: 5, 1: 7, 2: 5, 3: 3, 4: 3}


def test_set_payload_is_guarded_by_version(store, name):
    """A payload update lands on points of an equal or older version only."""
    store.create_collection(name("c"), CollectionSpec(8))
    old, new = versioned("a", 2, range(2)), versioned("a", 9, range(2, 3))
    store.upsert(name("c"), old + new)
    store.set_payload(name("c"), [p.id for p in old + new], {"version": 4, "metadata": {"tag": "x"}})
    payloads = store.retrieve(name("c"), [p.id for p in old + new])
    assert [payloads[p.id]["version"] for p in old + new] == [4, 4, 9]
    assert payloads[new[0].id]["metadata"] == {"n": 2}
    assert payloads[old[0].id]["metadata"] == {"tag": "x"}


def test_sweep_deletes_a_documents_superseded_points_only(store, name):
    """A sweep removes the document's points at or below its version except the kept ids,
    and never another document's points or a newer version's."""
    store.create_collection(name("c"), CollectionSpec(8))
    current = versioned("a", 4, range(2))
    ghosts = versioned("a", 3, range(2, 5))
    newer = versioned("a", 6, range(5, 6))
    other = versioned("b", 1, range(7, 9))
    store.upsert(name("c"), current + ghosts + newer + other)
    deleted = store.sweep(name("c"), [Sweep("a", 4, frozenset(p.id for p in current)), Sweep("zzz", 9)])
    assert deleted == 3
    assert set(ids_in(store, name("c"))) == {p.id for p in current + newer + other}
    assert store.sweep(name("c"), [Sweep("b", 1)]) == 2
    assert set(ids_in(store, name("c"))) == {p.id for p in current + newer}


def test_scroll_returns_payloads_matching_the_filter(store, name):
    """scroll lists (id, payload) of every point that matches, across pages."""
    store.create_collection(name("c"), CollectionSpec(8))
    store.upsert(name("c"), versioned("a", 1, range(3)) + versioned("b", 1, range(3, 1203)))
    found = store.scroll(name("c"), {"doc_key": "a"})
    assert sorted(p["metadata"]["n"] for _, p in found) == [0, 1, 2]
    assert len(store.scroll(name("c"))) == 1203


def test_points_without_a_version_are_treated_as_oldest(store, name):
    """Points stored before versions were recorded are overwritten and swept like old ones."""
    store.create_collection(name("c"), CollectionSpec(8))
    legacy = [PointWrite(p.id, p.vector, {"doc_key": "a"}) for p in versioned("a", 0, range(2))]
    store.upsert(name("c"), legacy)
    store.upsert(name("c"), versioned("a", 1, range(1)), guarded=True)
    assert store.retrieve(name("c"), [legacy[0].id])[legacy[0].id]["version"] == 1
    assert store.sweep(name("c"), [Sweep("a", 1, frozenset({legacy[0].id}))]) == 1
    assert ids_in(store, name("c")) == [legacy[0].id]


def test_a_write_the_store_refuses_is_store_rejected(store, name):
    """A point of the wrong dimension is StoreRejected (poison for one event), not a crash or a retry."""
    store.create_collection(name("c"), CollectionSpec(8))
    wrong = PointWrite(str(uuid.uuid4()), unit(0, dims=5), {"doc_key": "a", "version": 1})

    with pytest.raises(StoreRejected):
        store.upsert(name("c"), [wrong])
    store.upsert(name("c"), points(2))  # the store goes on
    assert store.count(name("c")) == 2


@pytest.fixture
def server_kind(kind: str) -> str:
    if kind not in SERVER_ADAPTERS:
        pytest.skip("the embedded engine has one owner: it cannot race, and has its own spec check")
    return kind


def test_large_writes_are_split_into_bounded_requests(server_kind, tmp_path, qdrant, name):
    """Upserts and deletes far over max_request_bytes are split and every point is written and removed."""
    store = open_store(server_kind, tmp_path, qdrant, max_request_bytes=64 * 1024)
    try:
        store.create_collection(name("c"), CollectionSpec(384))
        written = [
            PointWrite(str(uuid.uuid4()), unit(i, dims=384), {"doc_key": "big", "text": "x" * 2000})
            for i in range(120)
        ]  # about 1.4 MB of JSON: over 20 requests of at most 64 KiB
        store.upsert(name("c"), written)
        assert store.count(name("c")) == 120
        store.delete(name("c"), [p.id for p in written[:100]])
        assert set(ids_in(store, name("c"))) == {p.id for p in written[100:]}
    finally:
        store.drop_collection(name("c"))
        store.close()


def test_creating_an_existing_collection_with_another_spec_is_a_config_error(server_kind, store, name):
    """A collection of that name with other dims, datatype or quantization is never silently reused."""
    store.create_collection(name("c"), CollectionSpec(8, "float16", "int8"))
    store.create_collection(name("c"), CollectionSpec(8, "float16", "int8"))  # same spec: fine

    others = [CollectionSpec(16, "float16", "int8"), CollectionSpec(8, "float32", "int8")]
    if server_kind == "qdrant-server":  # local mode ignores quantization: it cannot tell
        others.append(CollectionSpec(8, "float16", "none"))
    for other in others:
        with pytest.raises(ConfigError, match=r"exists with 8 dims, float16"):
            store.create_collection(name("c"), other)


def test_sinks_creating_one_collection_at_once_all_succeed(server_kind, store, tmp_path, qdrant, name):
    """Several stores creating the same collection together all succeed (the losers see 409)."""
    if server_kind != "qdrant-server":
        pytest.skip("local mode keeps one process's data: there is nothing to race against")
    stores = [open_store(server_kind, tmp_path, qdrant) for _ in range(4)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(stores))

    def create(each: VectorStore) -> None:
        start.wait()
        try:
            each.create_collection(name("race"), CollectionSpec(8, "float16", "int8"))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(each,)) for each in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for each in stores:
        each.close()
    assert errors == []
    assert name("race") in store.collections()


def test_versions_compare_exactly_at_nanosecond_scale(store, name):
    """Guards and sweeps tell apart versions one apart near 2**61 (mtime_ns, LSNs), which a
    float64 comparison would confuse."""
    c = name("c")
    base = 1_795_947_537_573_830_735  # an mtime_ns: float64 cannot tell it from base + 1
    store.create_collection(c, CollectionSpec(8))
    store.upsert(c, versioned("a", base, range(2)))
    store.upsert(c, versioned("a", base - 1, range(2)), guarded=True)
    assert {p["version"] for p in store.retrieve(c, ids_in(store, c)).values()} == {base}
    store.upsert(c, versioned("a", base + 1, range(1)), guarded=True)
    assert store.sweep(c, [Sweep("a", base - 1)]) == 0
    assert store.sweep(c, [Sweep("a", base)]) == 1
    assert [p["version"] for _, p in store.scroll(c)] == [base + 1]


def test_stored_vectors_read_back_close_to_what_was_written(store, name):
    """retrieve_vectors returns each stored vector (float16 storage within its precision)."""
    c = name("c")
    store.create_collection(c, CollectionSpec(8, "float16"))
    written = points(3)
    store.upsert(c, written)
    found = store.retrieve_vectors(c, [p.id for p in written] + [str(uuid.uuid4())])
    assert set(found) == {p.id for p in written}
    for point in written:
        assert np.allclose(found[point.id], point.vector, atol=1e-3)


def test_the_embedded_engine_indexes_and_quantizes_large_segments(tmp_path, monkeypatch):
    """Past the indexing threshold the engine's optimizer runs (a server does it in the
    background; the embedded engine only when asked): every vector ends up indexed, so an
    int8 collection really searches int8 codes instead of full vectors."""
    import pipeline.store.edge as edge

    monkeypatch.setattr(edge, "INDEXING_THRESHOLD_KB", 1)
    store = EdgeStore(tmp_path / "edge")
    store.create_collection("c", CollectionSpec(8, "float32", "int8"))
    written = points(300)
    store.upsert("c", written)
    store.flush()
    store.close()
    reopened = EdgeStore(tmp_path / "edge")
    try:
        info = reopened._shard("c").info()
        assert info.indexed_vectors_count == info.points_count == 300
        hits = reopened.search("c", written[5].vector, SearchOptions(limit=1, oversampling=2.0, rescore=True))
        assert hits[0].id == written[5].id
    finally:
        reopened.close()
