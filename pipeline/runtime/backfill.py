"""Embedded backfill: replay a source's current documents into the versions being built.

Kafka backfills a new version by reading the compacted changes topic from offset 0. The
embedded mode has no such log, so it replays the source itself: one pass of the same
source (same folder, same include and exclude rules) with a scratch checkpoint of the new
version's own, delivered to that version alone. The scratch checkpoint moves per delivered
slice, so an interrupted backfill resumes where it stopped; once a pass completes, the
version's lifecycle records the source as backfilled and the scratch checkpoint goes.
Meanwhile every live change reaches the new version too (:mod:`pipeline.runtime.lanes`), and the
sink's version guard orders the two streams per document.
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
        source = source_at(scratch_home(pipeline.settings, number))
        tracker = ProgressTracker(progress, source.estimate() if progress else None)
        try:
            deliver = tracker.deliver(partial(pipeline.backfill, number))
            result = run_source_pass(source, deliver, slice_size=SLICE)
        finally:
            getattr(source, "close", lambda: None)()  # a database source holds a connection
        with pipeline.locked():
            version = find_version(pipeline.store, pipeline.settings.index.name, number)
            if version is not None:
                mark_backfilled(pipeline.store, version, source_name)
        checkpoint_of(pipeline.settings, number, source_name).unlink(missing_ok=True)
        label = f"{pipeline.settings.index.name}@v{number}"
        log.info("backfilled %s from %s: %d documents", label, source_name, result.published)
        done.append(Backfilled(label, source_name, result.published, stats.encoded - encoded_before))
    return done
