"""``embedstream verify``: compare an index with its sources, and repair it on request.

What "equal" means (DESIGN.md §3.7): every document the source holds now is in the live
version with the digest of its current text, its points are exactly its current chunks
(ids and texts), no point or live state belongs to a document that is gone, and for a
sample of points the stored vector is a fresh encoding of its chunk (cosine at least
:data:`MIN_COSINE`). Nothing here trusts a checkpoint: the source is read in full.

Repair goes through the source's own versioning, so the next normal pass cannot undo it:
each document found wrong is reserved in the source's checkpoint above every version the
index holds for it, which makes the next pass read it again (or delete it, when it is
gone) at a version above. A document whose recorded state is right but whose points are
not (another text, wrong ids, wrong vectors) is first deleted from the index, since a
re-read of the same text writes nothing; for wrong vectors the cache entries of its chunks
are overwritten with fresh encodings first.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.core.events import ChangeEvent
from pipeline.core.hashing import content_hash, normalize_text
from pipeline.core.planner import chunk_point_ids
from pipeline.runtime.embedded import EmbeddedPipeline
from pipeline.runtime.local import IndexSummary, index_source
from pipeline.sources import Change, Listable, PassReport, Source
from pipeline.store.payload import DOC_KEY, VERSION
from pipeline.versions.doc_states import DocStates
from pipeline.versions.spec import IndexVersion, live_version

#: A stored vector and a fresh encoding of its chunk agree at least this much: float16
#: storage and the quantization index (not the stored vector) stay well above it.
MIN_COSINE = 0.999

MISSING = "missing"  # in the source, not in the index
STALE_TEXT = "stale_text"  # indexed, but not the current text
WRONG_POINTS = "wrong_points"  # not exactly its current chunks
GHOST = "ghost"  # points or a live state of a document the source no longer holds
WRONG_VECTOR = "wrong_vector"  # a stored vector is not its chunk's encoding
#: Findings a re-read cannot mend alone: the recorded state may match the text.
_REWRITE = frozenset({STALE_TEXT, WRONG_POINTS, WRONG_VECTOR})


@dataclass(frozen=True)
class Finding:
    kind: str
    source: str
    doc_id: str
    detail: str

    def as_json(self) -> dict[str, str]:
        return {"kind": self.kind, "source": self.source, "doc_id": self.doc_id, "detail": self.detail}


@dataclass
class Verification:
    index: str
    documents: int = 0
    points: int = 0
    vectors_checked: int = 0
    findings: list[Finding] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)  # sources that cannot be listed

    @property
    def equal(self) -> bool:
        return not self.findings

    def as_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "equal": self.equal,
            "documents": self.documents,
            "points": self.points,
            "vectors_checked": self.vectors_checked,
            "findings": [f.as_json() for f in self.findings],
            "unlisted_sources": self.unlisted,
        }


@dataclass(frozen=True)
class _Indexed:
    """What the index holds for one source: points by document, live states."""

    points: dict[str, dict[str, dict[str, Any]]]  # doc_id -> point id -> payload
    live: dict[str, int]  # doc_id -> recorded version


def verify(
    pipeline: EmbeddedPipeline, sources: Sequence[Source], *, sample: int = 50, seed: int = 0
) -> Verification:
    """Compare the live version with what each listable source holds now."""
    result = Verification(pipeline.settings.index.name)
    version = live_version(pipeline.store, pipeline.settings.index.name)
    if version is None:
        for source in sources:
            _missing_all(result, source)
        return result
    chunker = pipeline.runtime.encoders.chunker_for(version)
    expected_points: list[tuple[str, str, str]] = []  # (doc key, point id, text) to sample
    for source in sources:
        if not isinstance(source, Listable):
            result.unlisted.append(source.name)
            continue
        indexed = _indexed(pipeline, version, source.name)
        current = dict(source.documents(PassReport()))
        states = DocStates(pipeline.store, version).get([f"{source.name}/{d}" for d in current])
        for doc_id, raw in sorted(current.items()):
            text = normalize_text(raw)
            key = f"{source.name}/{doc_id}"
            chunks = chunker.chunk(text) if text else []
            want = dict(zip(chunk_point_ids(key, chunks), (c.text for c in chunks), strict=True))
            state = states.get(key)
            finding = _compare(source.name, doc_id, text, want, indexed.points.get(doc_id, {}), state)
            if finding is not None:
                result.findings.append(finding)
            expected_points += [(key, pid, chunk_text) for pid, chunk_text in want.items()]
        result.documents += len(current)
        for doc_id in sorted((indexed.points.keys() | indexed.live.keys()) - current.keys()):
            count = len(indexed.points.get(doc_id, {}))
            detail = f"{count} points" + (", a live state" if doc_id in indexed.live else "")
            result.findings.append(Finding(GHOST, source.name, doc_id, f"gone from the source: {detail}"))
        result.points += sum(len(p) for p in indexed.points.values())
    _check_vectors(pipeline, version, expected_points, sample, seed, result)
    return result


def repair(pipeline: EmbeddedPipeline, sources: Sequence[Source], found: Verification) -> list[IndexSummary]:
    """Bring every document of ``found`` back in step through its source (see the module doc)."""
    version = live_version(pipeline.store, pipeline.settings.index.name)
    summaries = []
    for source in sources:
        wrong = {f.doc_id: f for f in found.findings if f.source == source.name}
        if not wrong:
            continue
        if version is not None:
            _refresh_cache(
                pipeline, version, source.name, [d for d, f in wrong.items() if f.kind == WRONG_VECTOR]
            )
            _forget(pipeline, version, source.name, [d for d, f in wrong.items() if f.kind in _REWRITE])
            ceiling = _highest_versions(pipeline, version, source.name, list(wrong))
        else:
            ceiling = {}
        source.reserve([_reservation(source.name, d, ceiling.get(d, 0)) for d in sorted(wrong)])
        summaries.append(index_source(pipeline, source, allow_mass_delete=True))
    return summaries


# --------------------------------------------------------------------------- comparing


def _compare(
    source: str,
    doc_id: str,
    text: str,
    want: dict[str, str],
    have: dict[str, dict[str, Any]],
    state: Any,
) -> Finding | None:
    if want and not have:
        return Finding(MISSING, source, doc_id, "no point in the index")
    if state is None or state.deleted or state.content_hash != content_hash(text):
        return Finding(STALE_TEXT, source, doc_id, "the recorded text digest is not the current text's")
    if set(have) != set(want):
        extra, lacking = len(set(have) - set(want)), len(set(want) - set(have))
        return Finding(WRONG_POINTS, source, doc_id, f"{extra} points too many, {lacking} missing")
    stale = [pid for pid, payload in have.items() if payload.get("text") != want[pid]]
    if stale:
        return Finding(STALE_TEXT, source, doc_id, f"{len(stale)} points hold another text")
    return None


def _indexed(pipeline: EmbeddedPipeline, version: IndexVersion, source: str) -> _Indexed:
    points: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for point_id, payload in pipeline.store.scroll(version.collection, {"source": source}):
        points[str(payload.get("doc_id", ""))][point_id] = payload
    return _Indexed(dict(points), DocStates(pipeline.store, version).live(source))


def _check_vectors(
    pipeline: EmbeddedPipeline,
    version: IndexVersion,
    points: list[tuple[str, str, str]],
    sample: int,
    seed: int,
    result: Verification,
) -> None:
    chosen = random.Random(seed).sample(  # noqa: S311 -- a reproducible sample, not a secret
        points, min(sample, len(points))
    )
    if not chosen:
        return
    stored = pipeline.store.retrieve_vectors(version.collection, [pid for _, pid, _ in chosen])
    encoder = pipeline.runtime.encoders.for_version(version)
    fresh = version.to_storage(encoder.encode_documents([text for _, _, text in chosen]))
    reported: set[str] = set()
    for (key, point_id, _), want in zip(chosen, fresh, strict=True):
        got = stored.get(point_id)
        if got is None:
            continue  # a missing point is already a finding of its document
        result.vectors_checked += 1
        vector = np.asarray(got, dtype=np.float32)
        cosine = float(vector @ want / (np.linalg.norm(vector) * np.linalg.norm(want) or 1.0))
        if cosine < MIN_COSINE and key not in reported:
            reported.add(key)
            source, _, doc_id = key.partition("/")
            detail = f"point {point_id}: cosine {cosine:.4f} with a fresh encoding of its chunk"
            result.findings.append(Finding(WRONG_VECTOR, source, doc_id, detail))


def _missing_all(result: Verification, source: Source) -> None:
    if not isinstance(source, Listable):
        result.unlisted.append(source.name)
        return
    for doc_id, _ in source.documents(PassReport()):
        result.documents += 1
        result.findings.append(Finding(MISSING, source.name, doc_id, "the index has no live version"))


# --------------------------------------------------------------------------- repairing


def _highest_versions(
    pipeline: EmbeddedPipeline, version: IndexVersion, source: str, doc_ids: list[str]
) -> dict[str, int]:
    """Per document, the highest version anything in the index carries: its state, its points."""
    highest: dict[str, int] = {}
    states = DocStates(pipeline.store, version).get([f"{source}/{d}" for d in doc_ids])
    for key, state in states.items():
        highest[key.partition("/")[2]] = state.version
    for doc_id in doc_ids:
        for _, payload in pipeline.store.scroll(version.collection, {DOC_KEY: f"{source}/{doc_id}"}):
            highest[doc_id] = max(highest.get(doc_id, 0), int(payload.get(VERSION, 0)))
    return highest


def _refresh_cache(
    pipeline: EmbeddedPipeline, version: IndexVersion, source: str, doc_ids: list[str]
) -> None:
    """Overwrite the cached vectors of these documents' chunks with fresh encodings: a wrong
    stored vector may have come from a wrong cached one."""
    encoder = pipeline.runtime.encoders.for_version(version)
    for doc_id in doc_ids:
        scrolled = pipeline.store.scroll(version.collection, {DOC_KEY: f"{source}/{doc_id}"})
        chunks = {str(p["chunk_hash"]): str(p["text"]) for _, p in scrolled if "chunk_hash" in p}
        if chunks:
            fresh = encoder.encode_documents(list(chunks.values()))
            pipeline.runtime.cache.put_many(encoder.fingerprint, dict(zip(chunks, fresh, strict=True)))


def _forget(pipeline: EmbeddedPipeline, version: IndexVersion, source: str, doc_ids: list[str]) -> None:
    """Delete these documents from the index, above every version it holds for them."""
    if not doc_ids:
        return
    ceiling = _highest_versions(pipeline, version, source, doc_ids)
    pipeline.process(
        [ChangeEvent(source=source, doc_id=d, op="delete", version=ceiling.get(d, 0) + 1) for d in doc_ids]
    )


def _reservation(source: str, doc_id: str, version: int) -> Change:
    """A change never published, only reserved: the next pass numbers the document above it."""
    event = ChangeEvent(source=source, doc_id=doc_id, op="delete", version=version + 1)
    return Change(event, doc_id, None)
