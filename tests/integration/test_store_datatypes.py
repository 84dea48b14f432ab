"""uint8 storage and product quantization on both store adapters (embedded engine, qdrant-client)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pipeline.config.settings import IndexSettings
from pipeline.store import CollectionSpec, PointWrite, SearchOptions, VectorStore
from pipeline.store.edge import EdgeStore
from pipeline.store.server import ServerStore
from pipeline.versions.spec import IndexVersion


@pytest.fixture(params=["edge", "qdrant-client"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    adapter: VectorStore = (
        EdgeStore(tmp_path / "edge") if request.param == "edge" else ServerStore(location=":memory:")
    )
    yield adapter
    adapter.close()


def unit_rows(rows: int, dims: int) -> np.ndarray:
    matrix = np.random.default_rng(3).normal(size=(rows, dims)).astype(np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def write(store: VectorStore, name: str, vectors: np.ndarray) -> list[str]:
    ids = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"p{i}")) for i in range(len(vectors))]
    points = [
        PointWrite(i, v.tolist(), {"doc_key": f"d{n}"})
        for n, (i, v) in enumerate(zip(ids, vectors, strict=True))
    ]
    store.upsert(name, points)
    store.flush()
    return ids


def test_a_uint8_version_stores_codes_and_ranks_by_cosine(store):
    """A uint8 collection holds the version's integer codes (read back exactly) and, compared by
    Euclidean distance, returns a stored vector's own point first with a cosine of 1."""
    version = IndexVersion.plan(IndexSettings(datatype="uint8", quantization="none"), 1, "m@1", 64)
    store.create_collection(version.collection, version.spec)
    store.create_collection(version.collection, version.spec)  # idempotent, spec checked
    vectors = unit_rows(40, 64)
    codes = version.to_storage(vectors)
    ids = write(store, version.collection, codes)
    assert store.retrieve_vectors(version.collection, ids[:1])[ids[0]] == codes[0].tolist()
    hits = store.search(version.collection, codes[9].tolist(), SearchOptions(limit=3))
    assert hits[0].id == ids[9]
    assert version.similarity(hits[0].score) == pytest.approx(1.0)
    assert version.similarity(hits[1].score) == pytest.approx(
        float(vectors[9] @ vectors[int(hits[1].payload["doc_key"][1:])]), abs=0.02
    )


def test_a_product_quantized_collection_answers_searches(store):
    """Product quantization (x16) is accepted by both adapters; rescored searches find the point itself."""
    store.create_collection("pq", CollectionSpec(64, "float32", "product"))
    store.create_collection("pq", CollectionSpec(64, "float32", "product"))
    vectors = unit_rows(40, 64)
    ids = write(store, "pq", vectors)
    hits = store.search("pq", vectors[5].tolist(), SearchOptions(limit=2, oversampling=2.0, rescore=True))
    assert hits[0].id == ids[5]
