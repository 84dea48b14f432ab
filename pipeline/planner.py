"""The pure core: decide what to encode, upsert and delete from plain values.

No I/O happens here. The embed stage asks :func:`plan_encode` which chunk hashes need
the model; the sink asks :func:`plan_write` which points to write and delete given what
the index already reflects for the document. Every invariant about "exactly its current
chunks", "stale events change nothing" and "unchanged text writes nothing" lives here.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from pipeline.chunking import Chunk
from pipeline.hashing import point_id, sha256_hex


class Outcome(StrEnum):
    ADDED = "added"
    CHANGED = "changed"
    UNCHANGED = "unchanged"
    DELETED = "deleted"
    STALE = "stale"


@dataclass(frozen=True)
class EncodePlan:
    """Unique chunk texts the model must see, keyed by chunk hash, and how many were reused."""

    to_encode: dict[str, str]
    reused: int


def plan_encode(chunk_lists: Sequence[Sequence[Chunk]], cached: Collection[str]) -> EncodePlan:
    """Only hashes never seen for this model are encoded, each once per batch."""
    to_encode: dict[str, str] = {}
    reused = 0
    for chunks in chunk_lists:
        for chunk in chunks:
            if chunk.hash in cached or chunk.hash in to_encode:
                reused += 1
            else:
                to_encode[chunk.hash] = chunk.text
    return EncodePlan(to_encode, reused)


def chunk_point_ids(doc_key: str, chunks: Sequence[Chunk]) -> list[str]:
    """Point ids for a document's chunks; repeats of one text get distinct occurrences."""
    seen: dict[str, int] = {}
    ids = []
    for chunk in chunks:
        occurrence = seen.get(chunk.hash, 0)
        seen[chunk.hash] = occurrence + 1
        ids.append(point_id(doc_key, chunk.hash, occurrence))
    return ids


def metadata_hash(metadata: dict[str, Any]) -> str:
    return sha256_hex(json.dumps(metadata, sort_keys=True, separators=(",", ":"), default=str))


@dataclass(frozen=True)
class DocState:
    """What the index reflects for one document; a deletion keeps a tombstone."""

    version: int
    content_hash: str
    meta_hash: str
    point_ids: tuple[str, ...]
    deleted: bool = False


@dataclass(frozen=True)
class Incoming:
    """The parts of a vectors event the write decision depends on."""

    op: str
    version: int
    content_hash: str
    meta_hash: str
    point_ids: tuple[str, ...]


@dataclass(frozen=True)
class WritePlan:
    outcome: Outcome
    upsert: tuple[int, ...]  # ordinals of the incoming chunks to write
    delete: tuple[str, ...]
    state: DocState | None  # bookkeeping to persist last; None = nothing to persist


def plan_write(incoming: Incoming, current: DocState | None) -> WritePlan:
    """Write new points first, then delete stale ones, then record the state.

    That order keeps every crash point safe: until the state is recorded, a replay of the
    same event recomputes the same plan, and every step is idempotent.
    """
    if current is not None and incoming.version < current.version:
        return WritePlan(Outcome.STALE, (), (), None)
    if incoming.op == "delete":
        return _plan_delete(incoming, current)
    state = DocState(incoming.version, incoming.content_hash, incoming.meta_hash, incoming.point_ids)
    live = current if current is not None and not current.deleted else None
    if live is not None and _same_content(live, state):
        bumped = replace(live, version=incoming.version) if incoming.version > live.version else None
        return WritePlan(Outcome.UNCHANGED, (), (), bumped)
    kept = set(live.point_ids) if live is not None and live.meta_hash == state.meta_hash else set()
    upsert = tuple(i for i, pid in enumerate(incoming.point_ids) if pid not in kept)
    new_ids = set(incoming.point_ids)
    delete = tuple(pid for pid in (live.point_ids if live else ()) if pid not in new_ids)
    return WritePlan(Outcome.ADDED if live is None else Outcome.CHANGED, upsert, delete, state)


def _plan_delete(incoming: Incoming, current: DocState | None) -> WritePlan:
    tombstone = DocState(incoming.version, "", "", (), deleted=True)
    if current is None or current.deleted:
        # Still record the tombstone: an older upsert arriving later must lose to it.
        unchanged = current is not None and current.version == incoming.version
        return WritePlan(Outcome.UNCHANGED, (), (), None if unchanged else tombstone)
    return WritePlan(Outcome.DELETED, (), current.point_ids, tombstone)


def _same_content(a: DocState, b: DocState) -> bool:
    return (
        a.content_hash == b.content_hash
        and a.meta_hash == b.meta_hash
        and set(a.point_ids) == set(b.point_ids)
    )
