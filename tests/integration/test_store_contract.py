"""One contract for every VectorStore adapter: the embedded engine and qdrant-client.

qdrant-client runs in its local mode here (no server in CI); the adapter code path —
models, filters, aliases, error translation — is the one used against a real server.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pipeline.store import CollectionSpec, PointWrite, SearchOptions, Sweep, VectorStore
from pipeline.store.edge import EdgeStore
from pipeline.store.server import ServerStore


@pytest.fixture(params=["edge", "qdrant-client"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    adapter: VectorStore = (
        EdgeStore(tmp_path / "edge") if request.param == "edge" else ServerStore(location=":memory:")
    )
    yield adapter
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
def test_create_upsert_count_and_search_the_nearest(store, quantization):
    """Upserted points are counted and the nearest neighbour of a stored vector is itself."""
    store.create_collection("c", CollectionSpec(8, "float16", quantization))
    store.create_collection("c", CollectionSpec(8, "float16", quantization))  # idempotent
    written = points(20)
    store.upsert("c", written)
    store.flush()
    assert store.count("c") == 20
    hits = store.search("c", written[7].vector, SearchOptions(limit=3, oversampling=2.0, rescore=True))
    assert hits[0].id == written[7].id
    assert hits[0].payload["metadata"]["n"] == 7


def test_upsert_is_idempotent_and_delete_removes(store):
    """Writing the same ids twice keeps one copy; deleted ids are gone from retrieve and scroll."""
    store.create_collection("c", CollectionSpec(8))
    written = points(5)
    store.upsert("c", written)
    store.upsert("c", written)
    store.delete("c", [written[0].id, written[1].id])
    assert store.count("c") == 3
    assert set(store.scroll_ids("c")) == {p.id for p in written[2:]}
    assert set(store.retrieve("c", [p.id for p in written])) == {p.id for p in written[2:]}


def test_filters_match_payload_values(store):
    """Search and count honour exact-match filters on nested payload keys."""
    store.create_collection("c", CollectionSpec(8))
    store.upsert("c", points(4, "a") + points(3, "b"))
    assert store.count("c", {"doc_key": "b"}) == 3
    hits = store.search("c", unit(1), SearchOptions(limit=10, filters={"doc_key": "a", "metadata.n": 2}))
    assert [h.payload["metadata"]["n"] for h in hits] == [2]


def test_alias_moves_atomically_between_collections(store):
    """set_alias points the alias at one collection, then at another."""
    store.create_collection("docs__v1", CollectionSpec(8))
    store.create_collection("docs__v2", CollectionSpec(8))
    assert store.get_alias("docs") is None
    store.set_alias("docs", "docs__v1")
    assert store.get_alias("docs") == "docs__v1"
    store.set_alias("docs", "docs__v2")
    assert store.get_alias("docs") == "docs__v2"
    assert {"docs__v1", "docs__v2"} <= set(store.collections())


def test_drop_collection_removes_it(store):
    """A dropped collection is no longer listed."""
    store.create_collection("gone", CollectionSpec(8))
    store.drop_collection("gone")
    assert "gone" not in store.collections()


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


def test_guarded_upsert_never_overwrites_a_newer_version(store):
    """A guarded write skips points a newer version stored and still inserts new ones."""
    store.create_collection("c", CollectionSpec(8))
    store.upsert("c", versioned("a", 5, range(3)))
    store.upsert("c", versioned("a", 3, range(5)), guarded=True)
    versions = {p["metadata"]["n"]: p["version"] for p in store.retrieve("c", store.scroll_ids("c")).values()}
    assert versions == {0: 5, 1: 5, 2: 5, 3: 3, 4: 3}
    store.upsert("c", versioned("a", 5, range(1)) + versioned("a", 7, range(1, 2)), guarded=True)
    versions = {p["metadata"]["n"]: p["version"] for p in store.retrieve("c", store.scroll_ids("c")).values()}
    assert versions == {0: 5, 1: 7, 2: 5, 3: 3, 4: 3}


def test_set_payload_is_guarded_by_version(store):
    """A payload update lands on points of an equal or older version only."""
    store.create_collection("c", CollectionSpec(8))
    old, new = versioned("a", 2, range(2)), versioned("a", 9, range(2, 3))
    store.upsert("c", old + new)
    store.set_payload("c", [p.id for p in old + new], {"version": 4, "metadata": {"tag": "x"}})
    payloads = store.retrieve("c", [p.id for p in old + new])
    assert [payloads[p.id]["version"] for p in old + new] == [4, 4, 9]
    assert payloads[new[0].id]["metadata"] == {"n": 2}
    assert payloads[old[0].id]["metadata"] == {"tag": "x"}


def test_sweep_deletes_a_documents_superseded_points_only(store):
    """A sweep removes the document's points at or below its version except the kept ids,
    and never another document's points or a newer version's."""
    store.create_collection("c", CollectionSpec(8))
    current = versioned("a", 4, range(2))
    ghosts = versioned("a", 3, range(2, 5))
    newer = versioned("a", 6, range(5, 6))
    other = versioned("b", 1, range(7, 9))
    store.upsert("c", current + ghosts + newer + other)
    deleted = store.sweep("c", [Sweep("a", 4, frozenset(p.id for p in current)), Sweep("zzz", 9)])
    assert deleted == 3
    assert set(store.scroll_ids("c")) == {p.id for p in current + newer + other}
    assert store.sweep("c", [Sweep("b", 1)]) == 2
    assert set(store.scroll_ids("c")) == {p.id for p in current + newer}


def test_scroll_returns_payloads_matching_the_filter(store):
    """scroll lists (id, payload) of every point that matches, across pages."""
    store.create_collection("c", CollectionSpec(8))
    store.upsert("c", versioned("a", 1, range(3)) + versioned("b", 1, range(3, 1203)))
    found = store.scroll("c", {"doc_key": "a"})
    assert sorted(p["metadata"]["n"] for _, p in found) == [0, 1, 2]
    assert len(store.scroll("c")) == 1203


def test_points_without_a_version_are_treated_as_oldest(store):
    """Points stored before versions were recorded are overwritten and swept like old ones."""
    store.create_collection("c", CollectionSpec(8))
    legacy = [PointWrite(p.id, p.vector, {"doc_key": "a"}) for p in versioned("a", 0, range(2))]
    store.upsert("c", legacy)
    store.upsert("c", versioned("a", 1, range(1)), guarded=True)
    assert store.retrieve("c", [legacy[0].id])[legacy[0].id]["version"] == 1
    assert store.sweep("c", [Sweep("a", 1, frozenset({legacy[0].id}))]) == 1
    assert store.scroll_ids("c") == [legacy[0].id]
