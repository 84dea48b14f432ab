"""The source loop (:func:`pipeline.runtime.passes.run_source_pass`) against the list-backed
fake source of :mod:`pipeline.testing`: no bus, no store, no model."""

from __future__ import annotations

import pytest

from pipeline.core.errors import Refused
from pipeline.runtime.passes import run_source_pass
from pipeline.testing import Collector, ListSource


def test_a_pass_publishes_every_document_in_slices_and_checkpoints_them():
    """Every document is delivered once, in slices of the given size, and the next pass is empty."""
    source = ListSource("notes", {f"d{i}": f"text {i}" for i in range(7)})
    sizes: list[int] = []
    collected = Collector()

    def deliver(events):
        sizes.append(len(events))
        return collected(events)

    result = run_source_pass(source, deliver, slice_size=3)
    assert (result.published, sizes) == (7, [3, 3, 1])
    assert collected.live() == {f"d{i}": f"text {i}" for i in range(7)}
    again = run_source_pass(source, Collector(), slice_size=3)
    assert (again.published, again.report.unchanged) == (0, 7)


def test_a_document_that_was_not_indexed_is_offered_again_next_pass():
    """Keys the delivery reports as failed are not checkpointed, so the next pass retries them."""
    source = ListSource("notes", {"a": "alpha", "b": "beta"})
    run_source_pass(source, Collector(failing={"notes/b"}), slice_size=10)
    retry = Collector()
    run_source_pass(source, retry, slice_size=10)
    assert [e.doc_id for e in retry.events] == ["b"]


def test_versions_stay_monotonic_across_delete_and_recreate():
    """A document deleted and written again gets a version above its tombstone."""
    source = ListSource("notes", {"a": "one"})
    seen = Collector()
    run_source_pass(source, seen, slice_size=10)
    source.remove("a")
    run_source_pass(source, seen, slice_size=10)
    source.put("a", "two")
    run_source_pass(source, seen, slice_size=10)
    versions = [e.version for e in seen.events]
    assert [e.op for e in seen.events] == ["upsert", "delete", "upsert"]
    assert versions == sorted(set(versions))


def test_orphans_in_the_index_are_deleted_when_the_index_is_consulted():
    """With ``indexed``, a document the index holds but the source lacks is deleted, above its
    indexed version."""
    source = ListSource("notes", {"a": "alpha"})
    seen = Collector()
    result = run_source_pass(source, seen, slice_size=10, indexed=lambda: {"a": 1, "ghost": 99})
    deletes = [e for e in seen.events if e.op == "delete"]
    assert (result.orphans, [e.doc_id for e in deletes]) == (1, ["ghost"])
    assert deletes[0].version > 99


def test_the_mass_delete_guard_refuses_before_anything_is_deleted():
    """Deleting most of what a source indexed is refused unless allowed, and nothing is deleted."""
    source = ListSource("notes", {f"d{i}": "x" for i in range(6)})
    run_source_pass(source, Collector(), slice_size=10)
    for i in range(5):
        source.remove(f"d{i}")
    seen = Collector()
    indexed = {f"d{i}": 1 for i in range(6)}
    with pytest.raises(Refused, match="would delete 5 of the 6"):
        run_source_pass(source, seen, slice_size=10, indexed=lambda: indexed, allow_mass_delete=False)
    assert [e for e in seen.events if e.op == "delete"] == []
    allowed = Collector()
    run_source_pass(source, allowed, slice_size=10, indexed=lambda: indexed, allow_mass_delete=True)
    assert sorted(e.doc_id for e in allowed.events if e.op == "delete") == [f"d{i}" for i in range(5)]


def test_versions_published_before_a_crash_stay_below_the_next_change():
    """A crash after publishing and before the checkpoint: the next event for that document
    (here a delete) is numbered above the version that may have reached the index."""
    source = ListSource("notes", {"a": "one"})
    run_source_pass(source, Collector(), slice_size=10)
    source.put("a", "two", clock=50)
    published = Collector()

    def crash_after_publishing(events):
        published(events)
        raise RuntimeError("killed before the checkpoint")

    with pytest.raises(RuntimeError):
        run_source_pass(source, crash_after_publishing, slice_size=10)
    source.remove("a")
    after = Collector()
    run_source_pass(source, after, slice_size=10)
    assert [e.op for e in after.events] == ["delete"]
    assert after.events[0].version > published.events[0].version


def test_replacing_every_document_is_a_mass_delete_measured_before_the_pass():
    """The guard compares deletions with what was indexed before the pass: six new documents
    added in the same pass do not make deleting the six old ones look like half."""
    source = ListSource("notes", {f"old{i}": "x" for i in range(6)})
    index = Collector()
    run_source_pass(source, index, slice_size=10)
    for i in range(6):
        source.remove(f"old{i}")
        source.put(f"new{i}", "y")
    with pytest.raises(Refused, match="would delete 6 of the 6"):
        run_source_pass(source, index, slice_size=10, indexed=index.indexed, allow_mass_delete=False)
    assert sorted(index.indexed()) == sorted([f"old{i}" for i in range(6)] + [f"new{i}" for i in range(6)])


def test_a_document_deleted_by_the_pass_is_not_deleted_again_as_an_orphan():
    """Reconciliation skips what the pass itself deleted (one tombstone, counted once)."""
    source = ListSource("notes", {"a": "x", "b": "y", "c": "z"})
    index = Collector()
    run_source_pass(source, index, slice_size=10)
    source.remove("a")
    seen = Collector()
    result = run_source_pass(source, seen, slice_size=10, indexed=index.indexed, allow_mass_delete=True)
    assert ([e.doc_id for e in seen.events if e.op == "delete"], result.orphans) == (["a"], 0)
