"""Index a directory through the embedded pipeline: one pass (``index``) or forever (``watch``).

The checkpoint learns a file's state only after its event is durably indexed, slice by
slice, so an interrupted run re-emits (and the cache makes that cheap) instead of losing.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connectors.filesystem import Change, Checkpoint, FilesystemSource, ScanReport, checkpoint_path
from pipeline.embedded import EmbeddedPipeline
from pipeline.planner import Outcome

log = logging.getLogger(__name__)

SLICE = 64  # documents per embed batch: large enough to batch the model well

Progress = Callable[[int, int | None], None]  # (documents done, total if known)


@dataclass
class IndexSummary:
    added: int = 0
    changed: int = 0
    unchanged: int = 0
    deleted: int = 0
    stale: int = 0
    encoded: int = 0
    reused: int = 0
    seconds: float = 0.0
    skipped: dict[str, int] = field(default_factory=dict)
    dead_letters: list[dict[str, str]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "docs": {
                "added": self.added,
                "changed": self.changed,
                "unchanged": self.unchanged,
                "deleted": self.deleted,
            },
            "chunks": {"encoded": self.encoded, "reused": self.reused},
            "seconds": round(self.seconds, 3),
            "skipped": self.skipped,
            "dead_lettered": len(self.dead_letters),
        }


def index_directory(
    pipeline: EmbeddedPipeline,
    root: Path,
    source: FilesystemSource,
    progress: Progress | None = None,
) -> IndexSummary:
    """Scan ``root`` once and bring the index in step with it."""
    started = time.perf_counter()
    before = _snapshot(pipeline)
    # Per index: a second index over the same files must see every file as new.
    settings = pipeline.settings
    path = checkpoint_path(settings.state_dir / "indexes" / settings.index.name, source.source, root)
    checkpoint = Checkpoint.load(path)
    report = ScanReport()
    total = source.count_candidates() if progress else None
    done = 0
    if progress:
        progress(0, total)
    for part in slices(source.scan(checkpoint, report), SLICE):
        pipeline.process([c.event for c in part if c.event is not None])
        for change in part:
            checkpoint.apply(change)
        checkpoint.save(path)
        done += len(part)
        if progress:
            progress(done + report.unchanged + sum(report.skipped.values()), total)
    return _summary(pipeline, before, report, time.perf_counter() - started)


def watch_directory(
    pipeline: EmbeddedPipeline,
    root: Path,
    source: FilesystemSource,
    stop: threading.Event,
    interval_s: float = 1.0,
    on_pass: Callable[[IndexSummary], None] | None = None,
) -> None:
    """Rescan every ``interval_s`` until ``stop`` is set; a pass in progress finishes."""
    while not stop.is_set():
        summary = index_directory(pipeline, root, source)
        if on_pass is not None and (summary.added or summary.changed or summary.deleted):
            on_pass(summary)
        stop.wait(interval_s)


def slices(changes: Iterator[Change], size: int) -> Iterator[Sequence[Change]]:
    while part := list(itertools.islice(changes, size)):
        yield part


def _snapshot(pipeline: EmbeddedPipeline) -> tuple[dict[str, int], int, int, int]:
    stats = pipeline.stats
    return dict(stats.docs), stats.encoded, stats.reused, len(pipeline.dead_letters())


def _summary(
    pipeline: EmbeddedPipeline,
    before: tuple[dict[str, int], int, int, int],
    report: ScanReport,
    seconds: float,
) -> IndexSummary:
    docs_before, encoded_before, reused_before, dead_before = before
    stats = pipeline.stats

    def delta(outcome: Outcome) -> int:
        return stats.docs[outcome] - docs_before.get(outcome, 0)

    return IndexSummary(
        added=delta(Outcome.ADDED),
        changed=delta(Outcome.CHANGED),
        unchanged=delta(Outcome.UNCHANGED) + report.unchanged,
        deleted=delta(Outcome.DELETED),
        stale=delta(Outcome.STALE),
        encoded=stats.encoded - encoded_before,
        reused=stats.reused - reused_before,
        seconds=seconds,
        skipped=dict(report.skipped),
        dead_letters=pipeline.dead_letters()[dead_before:],
    )
