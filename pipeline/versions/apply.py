"""Migrations, applied over the ``VectorStore`` port: the I/O around :mod:`pipeline.versions.decide`.

Where a version's lag comes from differs by mode (the embedded pipeline's unreplayed
sources, or Kafka consumer groups), so callers pass it in as a function; everything else
(states, the alias swap, rollback, gc) is the same in both modes.

The swap is one ``set_alias`` call: Qdrant moves an alias atomically, and the embedded
engine replaces ``aliases.json`` by rename, so a query is answered by the old complete
collection or by the new complete one, never by a mix. Lifecycle notes (when the alias
came and went) are written just before it: a swap that dies between the two has only
dated a move that did not happen, which gc reads as "not live long enough ago".
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from pipeline.core.errors import ConfigError, Refused
from pipeline.store import VectorStore
from pipeline.versions.decide import GcChoice, VersionState, gc_choice, promotion_refusals, rollback_target
from pipeline.versions.doc_states import DocStates
from pipeline.versions.spec import (
    IndexVersion,
    Lifecycle,
    create_version,
    drop_version,
    read_lifecycle,
    versions,
    write_lifecycle,
)

log = logging.getLogger(__name__)

LagOf = Callable[[IndexVersion], int | None]
PendingOf = Callable[[IndexVersion, Lifecycle], tuple[str, ...]]


@dataclass(frozen=True)
class Swap:
    """An alias move: from ``before`` (None: the alias pointed nowhere) to ``after``."""

    before: IndexVersion | None
    after: IndexVersion
    forced: tuple[str, ...] = ()  # the refusals --force overrode


def version_states(
    store: VectorStore,
    name: str,
    lag_of: LagOf,
    *,
    pending_of: PendingOf | None = None,
) -> list[VersionState]:
    """Every version of index ``name``, oldest first, with counts and lag (scores are added
    by the caller that wants them)."""
    live = store.get_alias(name)
    states = []
    for version in versions(store, name):
        lifecycle = read_lifecycle(store, version)
        is_live = version.collection == live
        states.append(
            VersionState(
                version=version,
                live=is_live,
                documents=DocStates(store, version).live_count(),
                points=store.count(version.collection),
                lag=lag_of(version),
                lifecycle=lifecycle,
                pending=() if is_live or pending_of is None else pending_of(version, lifecycle),
            )
        )
    return states


def create_building(store: VectorStore, version: IndexVersion) -> None:
    """Create a new version's collections; the alias stays where it is (if anywhere)."""
    create_version(store, version)
    write_lifecycle(store, version, Lifecycle())
    log.info("created %s (building)", version.collection)


def promote(
    store: VectorStore, states: Sequence[VersionState], number: int, margin: float, *, force: bool = False
) -> Swap:
    """Move the alias to version ``number`` if every gate passes (or ``force``), in one call."""
    candidate = _state(states, number)
    live = next((s for s in states if s.live), None)
    reasons = promotion_refusals(candidate, live, margin)
    if candidate.live:
        raise Refused(reasons[0])
    if reasons and not force:
        msg = (
            f"{candidate.version.label} is not promoted: " + "; ".join(reasons) + ". `embedstream migrate "
            "status` shows where it stands; or pass --force to promote anyway"
        )
        raise Refused(msg)
    if reasons:
        log.warning("promoting %s with --force despite: %s", candidate.version.label, "; ".join(reasons))
    before = live.version if live is not None else None
    swap(store, candidate.version, before, promoted_from=before.version if before else None)
    return Swap(before, candidate.version, tuple(reasons))


def rollback(store: VectorStore, states: Sequence[VersionState], to: int | None = None) -> Swap:
    """Move the alias back to the version the live one replaced (or to ``to``): one call."""
    live = next((s for s in states if s.live), None)
    if live is None:
        raise ConfigError("no version is live: nothing to roll back")
    target = rollback_target(live.version, live.lifecycle, [s.version.version for s in states], to)
    chosen = _state(states, target)
    swap(store, chosen.version, live.version, promoted_from=chosen.lifecycle.promoted_from)
    return Swap(live.version, chosen.version)


def swap(
    store: VectorStore, target: IndexVersion, previous: IndexVersion | None, *, promoted_from: int | None
) -> None:
    now = _now()
    if previous is not None:
        write_lifecycle(
            store, previous, dataclasses.replace(read_lifecycle(store, previous), unaliased_at=now)
        )
    held = read_lifecycle(store, target)
    write_lifecycle(
        store,
        target,
        dataclasses.replace(held, live_since=now, unaliased_at=None, promoted_from=promoted_from),
    )
    store.set_alias(target.name, target.collection)  # the one atomic step
    log.info("alias %s -> %s", target.name, target.collection)


def collect_garbage(
    store: VectorStore,
    states: Sequence[VersionState],
    retention_s: float,
    *,
    abandon: Iterable[int] = (),
    dry_run: bool = False,
    on_drop: Callable[[IndexVersion, GcChoice], None] | None = None,
) -> GcChoice:
    """Drop what :func:`pipeline.versions.decide.gc_choice` says (unless ``dry_run``); ``on_drop``
    follows each drop, told the whole choice."""
    abandoned = set(abandon)
    unknown = abandoned - {s.version.version for s in states}
    if unknown:
        raise ConfigError(f"--abandon: no version {', '.join(f'v{n}' for n in sorted(unknown))}")
    live = [s.version.label for s in states if s.live and s.version.version in abandoned]
    if live:
        raise Refused(f"--abandon: {live[0]} is live; promote or roll back to another version first")
    choice = gc_choice(states, _now(), retention_s, abandoned)
    if not dry_run:
        for version in choice.drop:
            drop_version(store, version)
            if on_drop is not None:
                on_drop(version, choice)
            log.info("dropped %s", version.collection)
    return choice


def mark_backfilled(store: VectorStore, version: IndexVersion, source: str) -> None:
    """Record that every document of ``source`` was replayed into ``version``."""
    held = read_lifecycle(store, version)
    if source not in held.backfilled:
        write_lifecycle(store, version, dataclasses.replace(held, backfilled=(*held.backfilled, source)))


def _state(states: Sequence[VersionState], number: int) -> VersionState:
    for state in states:
        if state.version.version == number:
            return state
    known = ", ".join(f"v{s.version.version}" for s in states) or "none"
    raise ConfigError(f"no version {number} (versions: {known})")


def _now() -> float:
    return time.time()
