"""Unit tests for the pure planning core: what to encode, upsert, delete and record."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from pipeline.chunking import Chunk
from pipeline.hashing import point_id, sha256_hex
from pipeline.planner import (
    DocState,
    Incoming,
    Outcome,
    chunk_point_ids,
    metadata_hash,
    plan_encode,
    plan_write,
)

KEY = "fs/doc.md"
META = metadata_hash({"title": "Doc"})


def chunks_of(*texts: str) -> list[Chunk]:
    out, pos = [], 0
    for ordinal, text in enumerate(texts):
        out.append(Chunk(ordinal, pos, pos + len(text), text, sha256_hex(text), len(text.split())))
        pos += len(text) + 2
    return out


def incoming(
    texts: Sequence[str], version: int, meta: str = META, op: str = "upsert", key: str = KEY
) -> Incoming:
    if op == "delete":
        return Incoming("delete", version, "", "", ())
    ids = tuple(chunk_point_ids(key, chunks_of(*texts)))
    return Incoming(op, version, sha256_hex("\n\n".join(texts)), meta, ids)


def state_of(event: Incoming) -> DocState:
    return DocState(event.version, event.content_hash, event.meta_hash, event.point_ids)


# ---------------------------------------------------------------- plan_encode


def test_plan_encode_encodes_only_uncached_hashes() -> None:
    """Chunks whose hash is cached are reused; the others are returned hash -> text."""
    doc = chunks_of("a", "b", "c")
    plan = plan_encode([doc], {doc[1].hash})
    assert plan.to_encode == {doc[0].hash: "a", doc[2].hash: "c"}
    assert plan.reused == 1


def test_plan_encode_encodes_each_hash_once_across_documents() -> None:
    """A text shared by several documents (or repeated in one) is encoded once, the rest count as reused."""
    first = chunks_of("shared", "x", "shared")
    second = chunks_of("y", "shared")
    plan = plan_encode([first, second], set())
    assert plan.to_encode == {sha256_hex("shared"): "shared", sha256_hex("x"): "x", sha256_hex("y"): "y"}
    assert plan.reused == 2


def test_plan_encode_all_cached_encodes_nothing() -> None:
    """When every hash is cached nothing is encoded and every chunk is reused."""
    doc = chunks_of("a", "b")
    plan = plan_encode([doc, doc], {c.hash for c in doc})
    assert plan.to_encode == {}
    assert plan.reused == 4
    assert plan_encode([], set()).to_encode == {}


# ---------------------------------------------------------------- chunk_point_ids


def test_chunk_point_ids_separate_repeated_chunks() -> None:
    """Identical chunks repeated in one document get distinct ids by occurrence."""
    ids = chunk_point_ids(KEY, chunks_of("same", "other", "same", "same"))
    assert len(set(ids)) == 4
    assert ids[0] == point_id(KEY, sha256_hex("same"), 0)
    assert ids[2] == point_id(KEY, sha256_hex("same"), 1)
    assert ids[3] == point_id(KEY, sha256_hex("same"), 2)


def test_chunk_point_ids_depend_on_content_not_position() -> None:
    """A chunk keeps its id when earlier chunks are inserted before it; other documents get other ids."""
    before = chunk_point_ids(KEY, chunks_of("b", "c"))
    after = chunk_point_ids(KEY, chunks_of("new", "b", "c"))
    assert after[1:] == before
    assert set(chunk_point_ids("fs/other.md", chunks_of("b", "c"))).isdisjoint(before)


# ---------------------------------------------------------------- plan_write


def test_new_document_is_added_with_all_upserts() -> None:
    """A document the index has never seen is ADDED: every chunk upserted, nothing deleted."""
    event = incoming(["a", "b", "c"], 1)
    plan = plan_write(event, None)
    assert plan.outcome is Outcome.ADDED
    assert plan.upsert == (0, 1, 2)
    assert plan.delete == ()
    assert plan.state == state_of(event)


def test_same_content_newer_version_is_unchanged_and_bumps_version() -> None:
    """Same text and metadata at a newer version writes nothing but records the new version."""
    current = state_of(incoming(["a", "b"], 1))
    plan = plan_write(incoming(["a", "b"], 5), current)
    assert plan.outcome is Outcome.UNCHANGED
    assert plan.upsert == ()
    assert plan.delete == ()
    assert plan.state is not None
    assert plan.state.version == 5
    assert plan.state.point_ids == current.point_ids


def test_same_content_same_version_is_unchanged_without_state() -> None:
    """A replay of the exact event the index reflects persists nothing at all."""
    event = incoming(["a", "b"], 3)
    plan = plan_write(event, state_of(event))
    assert plan.outcome is Outcome.UNCHANGED
    assert (plan.upsert, plan.delete, plan.state) == ((), (), None)


def test_shrink_deletes_only_vanished_ids_and_upserts_only_new_ones() -> None:
    """An edit deletes exactly the points that vanished and upserts only chunks not already stored."""
    old = incoming(["a", "b", "c", "d"], 1)
    new = incoming(["a", "c", "e"], 2)
    plan = plan_write(new, state_of(old))
    assert plan.outcome is Outcome.CHANGED
    assert plan.upsert == (2,)
    assert new.point_ids[2] == point_id(KEY, sha256_hex("e"), 0)
    assert set(plan.delete) == {point_id(KEY, sha256_hex(t), 0) for t in ("b", "d")}
    assert plan.state == state_of(new)


def test_pure_shrink_deletes_tail_and_upserts_nothing() -> None:
    """Dropping the last chunk deletes its point and writes no points."""
    old = incoming(["a", "b", "c"], 1)
    plan = plan_write(incoming(["a", "b"], 2), state_of(old))
    assert plan.outcome is Outcome.CHANGED
    assert plan.upsert == ()
    assert plan.delete == (old.point_ids[2],)


def test_removing_one_of_repeated_chunks_deletes_last_occurrence() -> None:
    """With a chunk repeated twice, removing one copy deletes exactly one point."""
    old = incoming(["x", "y", "x"], 1)
    plan = plan_write(incoming(["y", "x"], 2), state_of(old))
    assert plan.upsert == ()
    assert plan.delete == (point_id(KEY, sha256_hex("x"), 1),)


@pytest.mark.parametrize("op", ["upsert", "delete"])
def test_lower_version_is_stale_and_writes_nothing(op: str) -> None:
    """An event older than what the index reflects is STALE: no upserts, deletes or state."""
    current = state_of(incoming(["a", "b"], 10))
    plan = plan_write(incoming(["c"], 9, op=op), current)
    assert plan.outcome is Outcome.STALE
    assert (plan.upsert, plan.delete, plan.state) == ((), (), None)


def test_delete_of_live_document_deletes_all_points_and_records_tombstone() -> None:
    """Deleting a live document deletes every point id it has and records a tombstone."""
    current = state_of(incoming(["a", "b", "a"], 4))
    plan = plan_write(incoming([], 5, op="delete"), current)
    assert plan.outcome is Outcome.DELETED
    assert plan.upsert == ()
    assert set(plan.delete) == set(current.point_ids)
    assert len(plan.delete) == 3
    assert plan.state is not None
    assert plan.state.deleted
    assert plan.state.version == 5
    assert plan.state.point_ids == ()


def test_upsert_older_than_tombstone_is_stale() -> None:
    """After a deletion, an upsert with a lower version loses to the tombstone."""
    tombstone = DocState(7, "", "", (), deleted=True)
    plan = plan_write(incoming(["a"], 6), tombstone)
    assert plan.outcome is Outcome.STALE
    assert plan.state is None


def test_upsert_newer_than_tombstone_is_added() -> None:
    """A newer upsert after a deletion re-adds the document in full."""
    tombstone = DocState(7, "", "", (), deleted=True)
    event = incoming(["a", "b"], 8)
    plan = plan_write(event, tombstone)
    assert plan.outcome is Outcome.ADDED
    assert plan.upsert == (0, 1)
    assert plan.delete == ()
    assert plan.state == state_of(event)


def test_delete_of_unknown_document_records_tombstone_so_older_upsert_loses() -> None:
    """Deleting a never-seen document still records a tombstone; an older upsert then becomes STALE."""
    plan = plan_write(incoming([], 5, op="delete"), None)
    assert plan.outcome is Outcome.UNCHANGED
    assert plan.delete == ()
    assert plan.state is not None
    assert plan.state.deleted
    assert plan.state.version == 5
    late = plan_write(incoming(["a"], 4), plan.state)
    assert late.outcome is Outcome.STALE


def test_repeated_delete_same_version_persists_nothing() -> None:
    """A replayed delete of an already-deleted document at the same version writes nothing."""
    tombstone = DocState(5, "", "", (), deleted=True)
    plan = plan_write(incoming([], 5, op="delete"), tombstone)
    assert plan.outcome is Outcome.UNCHANGED
    assert (plan.upsert, plan.delete, plan.state) == ((), (), None)
    newer = plan_write(incoming([], 6, op="delete"), tombstone)
    assert newer.state is not None
    assert newer.state.version == 6


def test_metadata_change_rewrites_all_points() -> None:
    """Same text with different metadata upserts every chunk (payloads change) and deletes none."""
    old = incoming(["a", "b", "c"], 1, meta=metadata_hash({"title": "Old"}))
    new = incoming(["a", "b", "c"], 2, meta=metadata_hash({"title": "New"}))
    plan = plan_write(new, state_of(old))
    assert plan.outcome is Outcome.CHANGED
    assert plan.upsert == (0, 1, 2)
    assert plan.delete == ()
    assert plan.state == state_of(new)


def test_metadata_hash_is_order_insensitive() -> None:
    """metadata_hash ignores key order but reflects values."""
    assert metadata_hash({"a": 1, "b": 2}) == metadata_hash({"b": 2, "a": 1})
    assert metadata_hash({"a": 1}) != metadata_hash({"a": 2})


def apply(
    points: dict[str, str], texts: Sequence[str], event: Incoming, state: DocState | None
) -> DocState | None:
    """Apply a plan to a simulated point set, in the sink's order; return the recorded state."""
    plan = plan_write(event, state)
    for ordinal in plan.upsert:
        points[event.point_ids[ordinal]] = texts[ordinal]
    for pid in plan.delete:
        points.pop(pid, None)
    return plan.state if plan.state is not None else state


def test_a_b_a_sequence_ends_with_exactly_a_points() -> None:
    """Applying A, then B, then A again leaves exactly A's point ids, each with its text."""
    a_texts = ["intro", "shared", "middle", "outro"]
    b_texts = ["intro", "rewritten", "shared", "new tail", "shared"]
    points: dict[str, str] = {}
    state = apply(points, a_texts, incoming(a_texts, 1), None)
    a_ids = set(incoming(a_texts, 1).point_ids)
    assert set(points) == a_ids
    state = apply(points, b_texts, incoming(b_texts, 2), state)
    assert set(points) == set(incoming(b_texts, 2).point_ids)
    state = apply(points, a_texts, incoming(a_texts, 3), state)
    assert set(points) == a_ids
    assert sorted(points.values()) == sorted(a_texts)
    assert state is not None
    assert state.version == 3
    # A stale replay of B changes nothing.
    apply(points, b_texts, incoming(b_texts, 2), state)
    assert set(points) == a_ids


def test_delete_then_readd_sequence() -> None:
    """Add, delete, stale re-add and newer re-add leave the right point set at each step."""
    texts = ["one", "two"]
    points: dict[str, str] = {}
    state = apply(points, texts, incoming(texts, 1), None)
    state = apply(points, [], incoming([], 2, op="delete"), state)
    assert points == {}
    state = apply(points, texts, incoming(texts, 1), state)
    assert points == {}
    apply(points, texts, incoming(texts, 3), state)
    assert set(points) == set(incoming(texts, 3).point_ids)
