"""Ground truth for exact index comparisons: what the index must hold for a set of documents.

Exact means ids *and* vectors: every document's point set equals its current chunks, and
each stored vector is the encoding of its own chunk's text (as the index version stores it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from pipeline.core.chunking import Chunker
from pipeline.core.hashing import normalize_text
from pipeline.core.planner import chunk_point_ids
from pipeline.encoding import Encoder
from pipeline.store import VectorStore
from pipeline.versions.spec import IndexVersion

PointSets = dict[str, set[str]]
Chunks = dict[str, dict[str, str]]  # doc key -> point id -> chunk text

#: Cosine between a stored vector and a fresh encoding of its chunk: float16 storage and
#: int8 quantization (an index, not the stored vector) stay well above it.
MIN_COSINE = 0.999


def paragraphs(topic: str, count: int) -> str:
    """``count`` paragraphs of plain text about ``topic``: real words for the chunker."""
    return "\n\n".join(
        f"Paragraph {i} about {topic}. It explains detail number {i} of {topic} in a few plain "
        f"sentences, so that the chunker has real words to count. Item {i * 7} closes it."
        for i in range(count)
    )


def text_files(root: Path) -> dict[str, str]:
    """relative path -> text of every non-hidden file under ``root``."""
    found = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.is_file() and not any(part.startswith(".") for part in relative.split("/")):
            found[relative] = path.read_text(encoding="utf-8")
    return found


def expected_chunks(documents: Mapping[str, str], chunker: Chunker, source: str = "fs") -> Chunks:
    """doc key -> point id -> chunk text, computed from the documents' texts alone."""
    expected: Chunks = {}
    for doc_id, raw in documents.items():
        text = normalize_text(raw)
        chunks = chunker.chunk(text) if text else []
        if chunks:
            key = f"{source}/{doc_id}"
            expected[key] = dict(zip(chunk_point_ids(key, chunks), (c.text for c in chunks), strict=True))
    return expected


def expected_points(root: Path, chunker: Chunker, source: str = "fs") -> PointSets:
    """doc key -> point ids, computed from the files alone (text files, no hidden paths)."""
    return {key: set(ids) for key, ids in expected_chunks(text_files(root), chunker, source).items()}


def actual_chunks(store: VectorStore, version: IndexVersion) -> Chunks:
    """doc key -> point id -> chunk text, read back from the collection."""
    actual: Chunks = {}
    for point_id, payload in store.scroll(version.collection):
        actual.setdefault(str(payload["doc_key"]), {})[point_id] = str(payload["text"])
    return actual


def actual_points(store: VectorStore, version: IndexVersion) -> PointSets:
    """doc key -> point ids, read back from the collection."""
    return {key: set(ids) for key, ids in actual_chunks(store, version).items()}


def assert_index_equals(
    store: VectorStore, version: IndexVersion, expected: Chunks, encoder: Encoder
) -> None:
    """The collection holds exactly ``expected``: the same point ids per document, each with
    its chunk's text, and each vector the encoding of that text (cosine >= MIN_COSINE)."""
    actual = actual_chunks(store, version)
    assert {k: set(v) for k, v in actual.items()} == {k: set(v) for k, v in expected.items()}
    assert actual == expected
    _assert_vectors(
        store, version, [(pid, text) for chunks in expected.values() for pid, text in chunks.items()], encoder
    )


def _assert_vectors(
    store: VectorStore, version: IndexVersion, points: Iterable[tuple[str, str]], encoder: Encoder
) -> None:
    ids, texts = zip(*points, strict=True) if points else ((), ())
    if not ids:
        return
    stored = store.retrieve_vectors(version.collection, list(ids))
    fresh = version.to_storage(encoder.encode_documents(list(texts)))
    for point_id, want in zip(ids, fresh, strict=True):
        got = np.asarray(stored[point_id], dtype=np.float32)
        cosine = float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want)))
        assert cosine >= MIN_COSINE, (
            f"point {point_id}: stored vector is not its chunk's encoding ({cosine:.4f})"
        )
