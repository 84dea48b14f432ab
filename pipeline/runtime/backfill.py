"""Embedded backfill: replay a source's current documents into the versions being built.

Kafka backfills a new version by reading the compacted changes topic from offset 0. The
embedded mode has no such log, so it replays the source itself: one pass of the same
source (same folder, same include and exclude rules) with a scratch checkpoint of the new
version's own, delivered to that version alone. The scratch checkpoint moves per delivered
slice, so an interrupted backfill resumes where it stopped; once a pass completes, the
version's lifecycle records the source as backfilled and the scratch checkpoint goes.
Meanwhile every live change reaches the new version too (:mod:`pipeline.runtime.lanes`), and the
sink's version guard orders the two streams per document.

A source that cannot be read again (JSON lines: stdin, or a file that only brought the
latest changes) is replayed instead from the pipeline's :class:`~pipeline.runtime.embedded.ChangeLog`:
the last change delivered for each of its documents, whatever run or file brought it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from pipeline.config.settings import Settings
from pipeline.runtime.embedded import EmbeddedPipeline
from pipeline.runtime.local import SLICE, Progress, ProgressTracker
from pipeline.runtime.passes import run_source_pass
from pipeline.sources import Source
from pipeline.versions.apply import mark_backfilled
from pipeline.versions.spec import find_version, read_lifecycle

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backfilled:
    label: str  # index@vN
    source: str
    documents: int
    encoded: int


def scratch_home(settings: Settings, number: int) -> Path:
    """Where version ``number``'s backfill keeps its checkpoints until it is complete."""
    return settings.index_home / "backfill" / f"v{number}"


def checkpoint_of(settings: Settings, number: int, source: str) -> Path:
    return scratch_home(settings, number) / "checkpoints" / f"{source}.json"


def pending_versions(pipeline: EmbeddedPipeline, source: str) -> list[int]:
    """Versions fed by ``pipeline`` that were never live and lack ``source``'s documents."""
    pending = []
    with pipeline.locked():
        for number in pipeline.versions_fed:
            version = find_version(pipeline.store, pipeline.settings.index.name, number)
            if version is None or number == pipeline.version_number:
                continue
            lifecycle = read_lifecycle(pipeline.store, version)
            never_live = lifecycle.live_since is None and lifecycle.unaliased_at is None
            if never_live and source not in lifecycle.backfilled:
                pending.append(number)
    return pending


def backfill_source(
    pipeline: EmbeddedPipeline,
    source_name: str,
    source_at: Callable[[Path], Source],
    progress: Progress | None = None,
) -> list[Backfilled]:
    """Replay the source named ``source_name`` into each version that still lacks it;
    ``source_at(home)`` builds that source with its checkpoint and bindings under ``home``.
    ``progress`` hears (documents done, total) after each slice (a progress bar)."""
    done = []
    for number in pending_versions(pipeline, source_name):
        stats = pipeline.version_stats(number)
        encoded_before = stats.encoded
        if pipeline.changelog.keeps(source_name):
            published = _replay_log(pipeline, number, source_name, progress)
        else:
            published = _replay_source(pipeline, number, source_at, progress)
        with pipeline.locked():
            version = find_version(pipeline.store, pipeline.settings.index.name, number)
            if version is not None:
                mark_backfilled(pipeline.store, version, source_name)
        checkpoint_of(pipeline.settings, number, source_name).unlink(missing_ok=True)
        label = f"{pipeline.settings.index.name}@v{number}"
        log.info("backfilled %s from %s: %d documents", label, source_name, published)
        done.append(Backfilled(label, source_name, published, stats.encoded - encoded_before))
    return done


def _replay_source(
    pipeline: EmbeddedPipeline, number: int, source_at: Callable[[Path], Source], progress: Progress | None
) -> int:
    """One pass of the source, rebuilt with a scratch checkpoint, into version ``number``."""
    source = source_at(scratch_home(pipeline.settings, number))
    tracker = ProgressTracker(progress, source.estimate() if progress else None)
    try:
        deliver = tracker.deliver(partial(pipeline.backfill, number))
        return run_source_pass(source, deliver, slice_size=SLICE).published
    finally:
        getattr(source, "close", lambda: None)()  # a database source holds a connection


def _replay_log(pipeline: EmbeddedPipeline, number: int, source: str, progress: Progress | None) -> int:
    """The kept last change of each of the source's documents, into version ``number``."""
    tracker = ProgressTracker(progress, None)
    deliver = tracker.deliver(partial(pipeline.backfill, number))
    published = 0
    for events in pipeline.changelog.replay(source, page=SLICE):
        deliver(events)
        published += len(events)
    return published
