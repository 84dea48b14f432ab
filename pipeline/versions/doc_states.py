"""Per-document bookkeeping of an index version: the :class:`DocState` records in its
``__docs`` collection (version, content and metadata hashes, point ids, tombstones)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from pipeline.core.events import split_key
from pipeline.core.hashing import doc_state_id
from pipeline.core.planner import DocState
from pipeline.store import PointWrite, VectorStore
from pipeline.store.payload import DOC_KEY, VERSION
from pipeline.versions.spec import DOCS_VECTOR, IndexVersion

__all__ = ["DocStates"]


class DocStates:
    """Read and write :class:`DocState` records of one index version."""

    def __init__(self, store: VectorStore, version: IndexVersion) -> None:
        self._store = store
        self._collection = version.docs_collection

    def get(self, keys: Sequence[str]) -> dict[str, DocState]:
        ids = {doc_state_id(k): k for k in keys}
        found = self._store.retrieve(self._collection, list(ids))
        return {ids[i]: _state(p) for i, p in found.items() if i in ids}

    def put(self, states: Mapping[str, DocState]) -> None:
        """Record states, never over a newer recorded version (a fenced-out writer loses)."""
        points = [PointWrite(doc_state_id(key), DOCS_VECTOR, _record(key, s)) for key, s in states.items()]
        self._store.upsert(self._collection, points, guarded=True)

    def live_count(self, source: str | None = None) -> int:
        filters: dict[str, str] = {"status": "live"}
        if source is not None:
            filters["source"] = source
        return self._store.count(self._collection, filters)

    def live(self, source: str) -> dict[str, int]:
        """doc_id -> indexed version of every live document of ``source``."""
        found = self._store.scroll(self._collection, {"status": "live", "source": source})
        return {str(p["doc_id"]): int(p[VERSION]) for _, p in found if "doc_id" in p}


def _record(key: str, state: DocState) -> dict[str, Any]:
    source, doc_id = split_key(key)
    return {DOC_KEY: key, "source": source, "doc_id": doc_id, "status": _status(state), **asdict(state)}


def _status(state: DocState) -> str:
    # A keyword, not a bool: the embedded engine does not match boolean payload values.
    return "deleted" if state.deleted else "live"


def _state(payload: dict[str, Any]) -> DocState:
    return DocState(
        version=int(payload["version"]),
        content_hash=str(payload["content_hash"]),
        meta_hash=str(payload["meta_hash"]),
        point_ids=tuple(payload["point_ids"]),
        deleted=bool(payload["deleted"]),
    )
