"""The source loop: one pass of a source, published in slices and checkpointed only once
delivered, whatever the source and wherever the events go (embedded, Kafka, a backfill)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from pipeline.core.errors import Refused
from pipeline.core.events import ChangeEvent
from pipeline.core.faults import crash_point
from pipeline.sources import Change, PassReport, Source

#: A pass may delete at most half of a source's indexed documents (and at least this many
#: before the check applies) unless the caller allows more: an include glob that matches
#: nothing, or an empty mount point, must not wipe an index.
MASS_DELETE_MIN = 3

#: Publish events; return the keys of those that were not indexed (dead-lettered), whose
#: changes must therefore not be checkpointed (the next pass tries them again).
Deliver = Callable[[Sequence[ChangeEvent]], set[str]]
#: doc_id -> indexed version of the source's live documents, read from the index.
Indexed = Callable[[], Mapping[str, int]]


@dataclass
class PassResult:
    report: PassReport = field(default_factory=PassReport)
    published: int = 0
    deleted: int = 0
    orphans: int = 0


def run_source_pass(
    source: Source,
    deliver: Deliver,
    *,
    slice_size: int,
    indexed: Indexed | None = None,
    allow_mass_delete: bool = True,
) -> PassResult:
    """One pass: publish the source's changes in slices, checkpointing each slice only once
    it is delivered; with ``indexed`` and unless ``allow_mass_delete`` (or the source keeps
    its changes ``in_order``), deletions go last, after a check that
    they are not most of what the index held for this source *before* the pass (what the
    pass adds does not count: replacing every file, or a rebind to the wrong folder, is
    still most of the index going away).

    With ``indexed``, documents the index holds for this source but the pass did not see
    are deleted too (reconciling against the index, not only against the checkpoint).
    """
    result = PassResult()
    before = indexed() if indexed is not None else None
    deletions: list[Change] = []
    deleted: set[str] = set()  # deleted by this pass: not orphans too
    changes = _noting_deletions(source.changes(result.report), deleted)
    # Deletions wait for the check only when there is one; otherwise events keep the order
    # the source gave them (a delete and a re-create of one document in the same pass).
    # A source whose changes must stay in the order read (several changes of one key in one
    # pass: Debezium) cannot have its deletions held back; it is never mass-delete checked.
    guard = before is not None and not allow_mass_delete and not getattr(source, "in_order", False)
    updates = changes if not guard else (c for c in changes if not _is_deletion(c, deletions))
    for part in _slices(updates, slice_size):
        result.published += _deliver(source, deliver, part)
    if before is not None:
        orphans = [c for c in source.orphans(before) if c.doc_id not in deleted]
        result.orphans = len(orphans)
        deletions += orphans
        if guard:
            _check_mass_deletion(source, len(deletions), len(before))
    for part in _slices(iter(deletions), slice_size):
        result.deleted += _deliver(source, deliver, part)
    return result


def _noting_deletions(changes: Iterator[Change], deleted: set[str]) -> Iterator[Change]:
    for change in changes:
        if change.event is not None and change.event.op == "delete":
            deleted.add(change.doc_id)
        yield change


def _is_deletion(change: Change, deletions: list[Change]) -> bool:
    """Set deletions aside (they are published after the mass-deletion check)."""
    if change.event is not None and change.event.op == "delete":
        deletions.append(change)
        return True
    return False


def _deliver(source: Source, deliver: Deliver, part: Sequence[Change]) -> int:
    events = [c.event for c in part if c.event is not None]
    if events:
        source.reserve([c for c in part if c.event is not None])
        crash_point("source.after_reserve")
    failed = deliver(events) if events else set()
    crash_point("source.after_publish")
    source.commit([c for c in part if c.event is None or c.event.key not in failed])
    return len(events)


def _check_mass_deletion(source: Source, deletions: int, indexed: int) -> None:
    if deletions >= MASS_DELETE_MIN and deletions * 2 > indexed:
        msg = (
            f"this pass would delete {deletions} of the {indexed} documents indexed from source "
            f"{source.name!r} ({source.identity}); nothing was deleted. If that is intended (you "
            "removed or excluded those files), run again with --allow-mass-delete; otherwise check "
            "the path and the --include/--exclude globs (a glob without '/' matches at any depth)"
        )
        raise Refused(msg)


def _slices(changes: Iterator[Change] | Iterable[Change], size: int) -> Iterator[list[Change]]:
    iterator = iter(changes)
    while part := list(itertools.islice(iterator, size)):
        yield part
