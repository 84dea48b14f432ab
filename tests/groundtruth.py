"""Ground truth for exact index comparisons: what the index must hold for a set of files."""

from __future__ import annotations

from pathlib import Path

from pipeline.chunking import Chunker
from pipeline.hashing import normalize_text
from pipeline.index import IndexVersion
from pipeline.planner import chunk_point_ids
from pipeline.store import VectorStore

PointSets = dict[str, set[str]]


def expected_points(root: Path, chunker: Chunker, source: str = "fs") -> PointSets:
    """doc key -> point ids, computed from the files alone (text files, no hidden paths)."""
    expected: PointSets = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if not path.is_file() or any(part.startswith(".") for part in relative.split("/")):
            continue
        text = normalize_text(path.read_text(encoding="utf-8"))
        if text:
            key = f"{source}/{relative}"
            expected[key] = set(chunk_point_ids(key, chunker.chunk(text)))
    return expected


def actual_points(store: VectorStore, version: IndexVersion) -> PointSets:
    """doc key -> point ids, read back from the collection."""
    ids = store.scroll_ids(version.collection)
    payloads = store.retrieve(version.collection, ids)
    actual: PointSets = {}
    for point_id, payload in payloads.items():
        actual.setdefault(str(payload["doc_key"]), set()).add(point_id)
    return actual
