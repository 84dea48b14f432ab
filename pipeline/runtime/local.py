"""Index a source through the embedded pipeline: one pass (``index``) or forever (``watch``).

Both are :func:`pipeline.runtime.run_source_pass` over the embedded pipeline: the source's
checkpoint learns a document's state only after its event is durably indexed (or learns
nothing, when it was dead-lettered: the next pass tries it again).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.core.planner import Outcome
from pipeline.runtime.embedded import EmbeddedPipeline
from pipeline.runtime.passes import PassResult, run_source_pass
from pipeline.sources import Source

log = logging.getLogger(__name__)

SLICE = 64  # documents per embed batch: large enough to batch the model well

Progress = Callable[[float, int | None], None]  # (documents done, total if known)


@dataclass
class IndexSummary:
    """What one pass did, as ``index`` reports it."""

    # Documents, by outcome.
    added: int = 0
    changed: int = 0
    unchanged: int = 0
    deleted: int = 0
    stale: int = 0  # older than what the index holds: not applied
    # Chunks: sent to the model, and taken from the embedding cache instead.
    encoded: int = 0
    reused: int = 0
    seconds: float = 0.0
    skipped: dict[str, int] = field(default_factory=dict)
    dead_letters: list[dict[str, str]] = field(default_factory=list)
    # Dead-lettered by the source itself, before any event (an invalid JSON line).
    rejected: int = 0
    # Documents the pass looked at: each is counted once above, as an outcome, a skip or a
    # dead letter, so the counts add up to this.
    seen: int = 0

    @property
    def changed_anything(self) -> bool:
        return bool(self.added or self.changed or self.deleted or self.dead_letters or self.rejected)

    def as_json(self) -> dict[str, Any]:
        return {
            "docs": {
                "added": self.added,
                "changed": self.changed,
                "unchanged": self.unchanged,
                "deleted": self.deleted,
                "stale": self.stale,
            },
            "chunks": {"encoded": self.encoded, "reused": self.reused},
            "seconds": round(self.seconds, 3),
            "skipped": self.skipped,
            "dead_lettered": len(self.dead_letters) + self.rejected,
            "seen": self.seen,
        }


def index_source(
    pipeline: EmbeddedPipeline,
    source: Source,
    progress: Progress | None = None,
    *,
    allow_mass_delete: bool = False,
    reconcile: bool = True,
    thorough: bool = True,
) -> IndexSummary:
    """One pass over ``source``, bringing the index in step with it.

    ``reconcile`` also deletes documents the index holds for this source that the pass did
    not see (it costs one scan of the source's document states; ``thorough``, one of its
    points too, to find documents with points but no recorded state).
    """
    started = time.perf_counter()
    if _first_index(pipeline):
        # The model will be needed: load it while the source is read, chunked and hashed.
        getattr(pipeline.encoder, "preload", lambda: None)()
    before = _snapshot(pipeline)
    tracker = ProgressTracker(progress, source.estimate() if progress else None)
    pipeline.progress.on_encoding = tracker.encoding
    try:
        result = run_source_pass(
            source,
            tracker.deliver(pipeline.process),
            slice_size=SLICE,
            indexed=(lambda: pipeline.indexed(source.name, points=thorough)) if reconcile else None,
            allow_mass_delete=allow_mass_delete,
        )
    finally:
        pipeline.progress.on_encoding = None
    summary = _summary(pipeline, before, result, time.perf_counter() - started)
    # Never inside the pass: the small-call ONNX export is left to a background process.
    getattr(pipeline.encoder, "after_pass", lambda: None)()
    return summary


def _first_index(pipeline: EmbeddedPipeline) -> bool:
    """Whether the index being written holds no point yet (a first index: it will encode)."""
    name = pipeline.settings.index.name
    try:
        collection = pipeline.store.get_alias(name)
        return collection is None or pipeline.store.count(collection) == 0
    except Exception:  # a store that cannot tell: no preload, the first encode loads
        log.debug("could not tell whether %s is empty", name, exc_info=True)
        return False


def watch_source(
    pipeline: EmbeddedPipeline,
    source: Source,
    stop: threading.Event,
    interval_s: float = 1.0,
    on_pass: Callable[[IndexSummary], None] | None = None,
    *,
    allow_mass_delete: bool = False,
) -> None:
    """Pass every ``interval_s`` until ``stop`` is set; a pass in progress finishes.

    Every pass reconciles against the index (one scroll of the source's document states;
    the first also scrolls its points, for documents with points but no state) and keeps
    the mass-delete guard, measured against what was indexed before the pass.
    """
    first = True
    while not stop.is_set():
        summary = index_source(pipeline, source, allow_mass_delete=allow_mass_delete, thorough=first)
        if on_pass is not None and (first or summary.changed_anything):
            on_pass(summary)
        first = False
        stop.wait(interval_s)


class ProgressTracker:
    """Documents done, moving per encode slice inside a batch, not only per batch."""

    def __init__(self, progress: Progress | None, total: int | None) -> None:
        self._progress = progress
        self._total = total
        self._done = 0
        self._slice = 0
        if progress is not None:
            progress(0, total)

    def deliver(self, process: Callable[..., set[str]]) -> Callable[..., set[str]]:
        def delivering(events: Any) -> set[str]:
            self._slice = len(events)
            failed = process(events)
            self._done += len(events)
            self._report(self._done)
            return failed

        return delivering

    def encoding(self, done: int, total: int) -> None:
        if total:
            self._report(self._done + self._slice * done / total)

    def _report(self, done: float) -> None:
        if self._progress is not None:
            self._progress(done, self._total)


def _snapshot(pipeline: EmbeddedPipeline) -> tuple[dict[str, int], int, int, int]:
    stats = pipeline.stats
    return dict(stats.docs), stats.encoded, stats.reused, len(pipeline.dead_letters())


def _summary(
    pipeline: EmbeddedPipeline,
    before: tuple[dict[str, int], int, int, int],
    result: PassResult,
    seconds: float,
) -> IndexSummary:
    docs_before, encoded_before, reused_before, dead_before = before
    stats = pipeline.stats

    def delta(outcome: Outcome) -> int:
        return stats.docs[outcome] - docs_before.get(outcome, 0)

    return IndexSummary(
        added=delta(Outcome.ADDED),
        changed=delta(Outcome.CHANGED),
        unchanged=delta(Outcome.UNCHANGED) + result.report.unchanged,
        deleted=delta(Outcome.DELETED),
        stale=delta(Outcome.STALE),
        encoded=stats.encoded - encoded_before,
        reused=stats.reused - reused_before,
        seconds=seconds,
        skipped=dict(result.report.skipped),
        dead_letters=pipeline.dead_letters()[dead_before:],
        seen=result.published
        + result.deleted
        + result.report.unchanged
        + sum(result.report.skipped.values()),
    )
