"""The pure core: decide what to encode, upsert and delete from plain values.

No I/O happens here. The embed stage asks :func:`plan_encode` which chunk hashes need
the model; the sink asks :func:`plan_batch` what to write for each document given what
the index already reflects for it. Every invariant about "stale events change nothing"
and "unchanged text writes nothing" lives here; "exactly its current chunks" is the
sink's sweep after each write (by document key, not by remembered ids).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pipeline.core.chunking import Chunk
from pipeline.core.hashing import point_id, sha256_hex


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


class Write(StrEnum):
    """What the sink does for a document, before recording its state and sweeping."""

    NOTHING = "nothing"  # stale, or already exactly recorded
    STATE = "state"  # same text and metadata: only the newer version is recorded
    PAYLOAD = "payload"  # same text, new metadata: payloads change, vectors do not
    POINTS = "points"  # new text: every current chunk is written
    DELETE = "delete"  # gone or unindexable: no point of it may remain


@dataclass(frozen=True)
class WritePlan:
    outcome: Outcome
    write: Write
    state: DocState | None  # bookkeeping to record; None = nothing to record


def plan_write(incoming: Incoming, current: DocState | None) -> WritePlan:
    """The write that brings a document from ``current`` to ``incoming``.

    Whatever the plan, the sink then sweeps the document's points that the recorded state
    does not list, so earlier attempts that crashed before recording leave nothing behind.
    """
    if current is not None and incoming.version < current.version:
        return WritePlan(Outcome.STALE, Write.NOTHING, None)
    if incoming.op == "delete":
        return _plan_delete(incoming, current)
    state = DocState(incoming.version, incoming.content_hash, incoming.meta_hash, incoming.point_ids)
    return _plan_upsert(state, current if current is not None and not current.deleted else None)


def _plan_upsert(state: DocState, live: DocState | None) -> WritePlan:
    if live is None:
        return WritePlan(Outcome.ADDED, Write.POINTS, state)
    if live.content_hash != state.content_hash or set(live.point_ids) != set(state.point_ids):
        return WritePlan(Outcome.CHANGED, Write.POINTS, state)
    if live.meta_hash != state.meta_hash:
        return WritePlan(Outcome.CHANGED, Write.PAYLOAD, state)
    if state.version > live.version:
        return WritePlan(Outcome.UNCHANGED, Write.STATE, state)
    return WritePlan(Outcome.UNCHANGED, Write.NOTHING, None)


def _plan_delete(incoming: Incoming, current: DocState | None) -> WritePlan:
    tombstone = DocState(incoming.version, "", "", (), deleted=True)
    if current is not None and current.deleted:
        same = current.version == incoming.version
        return WritePlan(
            Outcome.UNCHANGED, Write.NOTHING if same else Write.STATE, None if same else tombstone
        )
    # Record the tombstone even for a never-indexed document: an older upsert arriving
    # later must lose to it.
    outcome = Outcome.UNCHANGED if current is None else Outcome.DELETED
    return WritePlan(outcome, Write.DELETE, tombstone)


@dataclass(frozen=True)
class BatchPlan:
    """Per event, what happened (in order); per document, the one write to perform."""

    outcomes: list[Outcome]
    writes: dict[str, tuple[int, WritePlan]]  # doc key -> (index of its last event, plan)


def plan_batch(events: Sequence[tuple[str, Incoming]], recorded: Mapping[str, DocState]) -> BatchPlan:
    """Fold a batch: each event is judged against the documents as the batch left them
    so far (the outcomes users see), but only each document's last accepted event is
    written, against what is recorded: A→B→A in one batch writes nothing."""
    running: dict[str, DocState | None] = dict(recorded)
    outcomes: list[Outcome] = []
    last: dict[str, int] = {}
    for index, (key, incoming) in enumerate(events):
        plan = plan_write(incoming, running.get(key))
        outcomes.append(plan.outcome)
        if plan.outcome is not Outcome.STALE:
            last[key] = index
            if plan.state is not None:
                running[key] = plan.state
    writes = {key: (i, plan_write(events[i][1], recorded.get(key))) for key, i in last.items()}
    return BatchPlan(outcomes, writes)
