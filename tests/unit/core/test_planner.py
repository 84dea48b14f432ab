"""Unit tests for the pure planning core: what to encode, upsert, delete and record."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from pipeline.core.chunking import Chunk
from pipeline.core.hashing import point_id, sha256_hex
from pipeline.core.planner import (
    DocState,
    Incoming,
    Outcome,
    Write,
    chunk_point_ids,
    metadata_hash,
    plan_batch,
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


def test_new_document_is_added_and_written_in_full() -> None:
    """A document the index has never seen is ADDED: every chunk is written."""
    event = incoming(["a", "b", "c"], 1)
    plan = plan_write(event, None)
    assert (plan.outcome, plan.write, plan.state) == (Outcome.ADDED, Write.POINTS, state_of(event))


def test_same_content_newer_version_is_unchanged_and_bumps_version() -> None:
    """Same text and metadata at a newer version writes no point but records the new version."""
    current = state_of(incoming(["a", "b"], 1))
    plan = plan_write(incoming(["a", "b"], 5), current)
    assert (plan.outcome, plan.write) == (Outcome.UNCHANGED, Write.STATE)
    assert plan.state is not None
    assert plan.state.version == 5
    assert plan.state.point_ids == current.point_ids


def test_same_content_same_version_is_unchanged_without_state() -> None:
    """A replay of the exact event the index reflects persists nothing at all."""
    event = incoming(["a", "b"], 3)
    plan = plan_write(event, state_of(event))
    assert (plan.outcome, plan.write, plan.state) == (Outcome.UNCHANGED, Write.NOTHING, None)


def test_changed_text_rewrites_every_current_chunk() -> None:
    """An edit writes the whole current chunk set (each point stamped with the new version)."""
    old = incoming(["a", "b", "c", "d"], 1)
    new = incoming(["a", "c", "e"], 2)
    plan = plan_write(new, state_of(old))
    assert (plan.outcome, plan.write, plan.state) == (Outcome.CHANGED, Write.POINTS, state_of(new))


@pytest.mark.parametrize("op", ["upsert", "delete"])
def test_lower_version_is_stale_and_writes_nothing(op: str) -> None:
    """An event older than what the index reflects is STALE: no write and no state."""
    current = state_of(incoming(["a", "b"], 10))
    plan = plan_write(incoming(["c"], 9, op=op), current)
    assert (plan.outcome, plan.write, plan.state) == (Outcome.STALE, Write.NOTHING, None)


def test_delete_of_live_document_records_a_tombstone() -> None:
    """Deleting a live document deletes its points and records a tombstone at its version."""
    current = state_of(incoming(["a", "b", "a"], 4))
    plan = plan_write(incoming([], 5, op="delete"), current)
    assert (plan.outcome, plan.write) == (Outcome.DELETED, Write.DELETE)
    assert plan.state == DocState(5, "", "", (), deleted=True)


def test_upsert_older_than_tombstone_is_stale() -> None:
    """After a deletion, an upsert with a lower version loses to the tombstone."""
    tombstone = DocState(7, "", "", (), deleted=True)
    plan = plan_write(incoming(["a"], 6), tombstone)
    assert (plan.outcome, plan.state) == (Outcome.STALE, None)


def test_upsert_as_new_as_the_tombstone_is_added() -> None:
    """An upsert at or above the tombstone's version re-adds the document in full (a
    dead-lettered document re-emitted at the same version once a limit is raised)."""
    tombstone = DocState(7, "", "", (), deleted=True)
    for version in (7, 8):
        event = incoming(["a", "b"], version)
        plan = plan_write(event, tombstone)
        assert (plan.outcome, plan.write, plan.state) == (Outcome.ADDED, Write.POINTS, state_of(event))


def test_delete_of_unknown_document_records_tombstone_so_older_upsert_loses() -> None:
    """Deleting a never-seen document still sweeps and records a tombstone; an older upsert
    then becomes STALE."""
    plan = plan_write(incoming([], 5, op="delete"), None)
    assert (plan.outcome, plan.write) == (Outcome.UNCHANGED, Write.DELETE)
    assert plan.state == DocState(5, "", "", (), deleted=True)
    assert plan_write(incoming(["a"], 4), plan.state).outcome is Outcome.STALE


def test_repeated_delete_same_version_persists_nothing() -> None:
    """A replayed delete of an already-deleted document at the same version writes nothing."""
    tombstone = DocState(5, "", "", (), deleted=True)
    plan = plan_write(incoming([], 5, op="delete"), tombstone)
    assert (plan.outcome, plan.write, plan.state) == (Outcome.UNCHANGED, Write.NOTHING, None)
    newer = plan_write(incoming([], 6, op="delete"), tombstone)
    assert newer.state is not None
    assert newer.state.version == 6


def test_metadata_only_change_updates_payloads_not_vectors() -> None:
    """Same text with different metadata is CHANGED but writes payloads only."""
    old = incoming(["a", "b", "c"], 1, meta=metadata_hash({"title": "Old"}))
    new = incoming(["a", "b", "c"], 2, meta=metadata_hash({"title": "New"}))
    plan = plan_write(new, state_of(old))
    assert (plan.outcome, plan.write, plan.state) == (Outcome.CHANGED, Write.PAYLOAD, state_of(new))


def test_metadata_hash_is_order_insensitive() -> None:
    """metadata_hash ignores key order but reflects values."""
    assert metadata_hash({"a": 1, "b": 2}) == metadata_hash({"b": 2, "a": 1})
    assert metadata_hash({"a": 1}) != metadata_hash({"a": 2})


# ---------------------------------------------------------------- plan_batch


def test_a_b_a_in_one_batch_reports_each_step_but_writes_only_a_version_bump() -> None:
    """Outcomes follow the batch in order; the write compares the last event with the record."""
    a1 = incoming(["alpha"], 1)
    batch = plan_batch([(KEY, incoming(["beta"], 2)), (KEY, incoming(["alpha"], 3))], {KEY: state_of(a1)})
    assert batch.outcomes == [Outcome.CHANGED, Outcome.CHANGED]
    index, plan = batch.writes[KEY]
    assert (index, plan.write) == (1, Write.STATE)


def test_a_stale_event_inside_a_batch_is_judged_against_the_batch_so_far() -> None:
    """v3 then v2 in one batch: v2 is stale and v3 is what gets written."""
    batch = plan_batch([(KEY, incoming(["three"], 3)), (KEY, incoming(["two"], 2))], {})
    assert batch.outcomes == [Outcome.ADDED, Outcome.STALE]
    index, plan = batch.writes[KEY]
    assert (index, plan.outcome, plan.write) == (0, Outcome.ADDED, Write.POINTS)


def test_add_then_delete_in_one_batch_sweeps_and_leaves_a_tombstone() -> None:
    """A document created and deleted within one batch ends as a tombstone, nothing written."""
    batch = plan_batch([(KEY, incoming(["x"], 1)), (KEY, incoming([], 2, op="delete"))], {})
    assert batch.outcomes == [Outcome.ADDED, Outcome.DELETED]
    _, plan = batch.writes[KEY]
    assert plan.write is Write.DELETE
    assert plan.state == DocState(2, "", "", (), deleted=True)


def test_an_all_stale_document_has_no_write() -> None:
    """A document whose every event in the batch is stale gets no write at all."""
    batch = plan_batch([(KEY, incoming(["old"], 1))], {KEY: state_of(incoming(["new"], 5))})
    assert batch.outcomes == [Outcome.STALE]
    assert batch.writes == {}
