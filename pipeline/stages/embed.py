"""Embed stage: change events in, one vectors event per document out.

Normalizes and chunks each document, looks every chunk hash up in the embedding cache,
encodes only what the cache has never seen for this model, and emits the document's full
chunk set. Unchanged text therefore costs a cache lookup and no model time.

Encoding runs in bounded slices and the cache is written after each, so a crash (or a
``kill -9``) in the middle of a long first index keeps every vector already computed.
A document that cannot be indexed (too large, empty, NaN vectors) is dead-lettered *and*
followed by a deletion, so its previous version does not stay searchable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.bus import Outgoing, Record
from pipeline.bus.dead_letters import dead_letter
from pipeline.config.settings import LimitsSettings
from pipeline.core.chunking import Chunk, Chunker
from pipeline.core.errors import DocumentTooLarge, EmptyDocument, InvalidEvent, InvalidVectors, PoisonError
from pipeline.core.events import UNINDEXABLE, ChangeEvent, ChunkRef, VectorsEvent
from pipeline.core.faults import crash_point
from pipeline.core.hashing import is_utf8, normalize_text, sha256_hex
from pipeline.core.planner import chunk_point_ids, plan_encode
from pipeline.encoding import Encoder
from pipeline.encoding.cache import EmbeddingCache, Vector
from pipeline.observability import Observer

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 1_000_000  # Kafka's default message.max.bytes
#: Tokens per encode call: a few seconds of CPU (one large batch on a GPU), so the cache
#: is written often enough that a crash loses little, and batches stay well padded.
ENCODE_SLICE_TOKENS = 32_768


@dataclass(frozen=True)
class _Doc:
    record: Record
    event: ChangeEvent
    content_hash: str
    chunks: list[Chunk]


class EmbedStage:
    name = "embed"

    def __init__(
        self,
        encoder: Encoder,
        cache: EmbeddingCache,
        chunker: Chunker,
        limits: LimitsSettings,
        vectors_topic: str,
        dlq_topic: str,
        observer: Observer,
        encode_slice_tokens: int = ENCODE_SLICE_TOKENS,
    ) -> None:
        self._encoder = encoder
        self._cache = cache
        self._chunker = chunker
        self._limits = limits
        self._vectors_topic = vectors_topic
        self._dlq_topic = dlq_topic
        self._observer = observer
        self._slice_tokens = encode_slice_tokens

    def handle(self, records: Sequence[Record]) -> list[Outgoing]:
        # In record order: one document's messages must leave in the order its events came.
        slots: list[_Doc | list[Outgoing]] = [self._slot(record) for record in records]
        vectors = self._vectors_for([d for d in slots if isinstance(d, _Doc) and d.chunks])
        out = [m for slot in slots for m in (self._emit(slot, vectors) if isinstance(slot, _Doc) else slot)]
        log.debug("embedded batch", extra={"records": len(records), "out": len(out)})
        return out

    def _slot(self, record: Record) -> _Doc | list[Outgoing]:
        """A document to encode, or the messages that already answer the record."""
        try:
            event = self._parse(record)
        except PoisonError as error:
            return [self._dead_letter(record, error)]
        try:
            return self._prepare(record, event)
        except PoisonError as error:
            return self._unindexable(record, event, error)

    def _parse(self, record: Record) -> ChangeEvent:
        key = record.key or ""
        if not is_utf8(key):
            raise InvalidEvent("the record key is not valid UTF-8")
        event = ChangeEvent.from_bytes(record.value)
        self._observer.event_in(self.name, event.op)
        if record.key is not None and record.key != event.key:
            # Per-document order holds only if the record is keyed by its document.
            raise InvalidEvent(
                f"record key {key[:200]!r} is not the event's source/doc_id {event.key[:200]!r}"
            )
        return event

    def _prepare(self, record: Record, event: ChangeEvent) -> _Doc:
        if event.op == "delete":
            return _Doc(record, event, "", [])
        text = event.text or ""
        if len(text.encode("utf-8")) > self._limits.max_doc_bytes:
            raise DocumentTooLarge(f"text over limits.max_doc_bytes={self._limits.max_doc_bytes}")
        normalized = normalize_text(text)
        if not normalized:
            raise EmptyDocument("text is empty after normalization")
        chunks = self._chunker.chunk(normalized)
        if not chunks:
            raise EmptyDocument("text has no words the model can read (only invisible characters?)")
        if len(chunks) > self._limits.max_chunks_per_doc:
            msg = f"{len(chunks)} chunks, over limits.max_chunks_per_doc={self._limits.max_chunks_per_doc}"
            raise DocumentTooLarge(msg)
        return _Doc(record, event, sha256_hex(normalized), chunks)

    def _vectors_for(self, docs: Sequence[_Doc]) -> dict[str, Vector]:
        fingerprint = self._encoder.fingerprint
        known = self._cache.get_many(fingerprint, [c.hash for d in docs for c in d.chunks])
        plan = plan_encode([d.chunks for d in docs], known.keys())
        if not plan.to_encode:
            if plan.reused:
                self._observer.chunks(0, plan.reused, 0)
            return known
        # The chunker already counted every chunk's tokens; no second tokenizer pass.
        sizes = {c.hash: c.tokens for d in docs for c in d.chunks}
        fresh: dict[str, Vector] = {}
        reused, total, done = plan.reused, len(plan.to_encode), 0
        for part in _slices(plan.to_encode, sizes, self._slice_tokens):
            fresh.update(self._encode(part))
            done += len(part)
            self._observer.chunks(len(part), reused, sum(sizes[h] for h in part))
            self._observer.encoding(done, total)
            # Per slice, as the cache is written: a crash loses no record of work kept.
            log.info("encoded chunks", extra={"encoded": len(part), "reused": reused, "of": total})
            reused = 0
            crash_point("embed.after_encode")
        return {**known, **fresh}

    def _encode(self, part: dict[str, str]) -> dict[str, Vector]:
        """Encode one slice and cache its finite vectors at once (a NaN row is left out: its
        document is dead-lettered, and the text is tried again next time)."""
        started = time.perf_counter()
        matrix = self._encoder.encode_documents(list(part.values()))
        self._observer.encode_batch(time.perf_counter() - started)
        fresh = {h: matrix[i] for i, h in enumerate(part) if bool(np.isfinite(matrix[i]).all())}
        self._cache.put_many(self._encoder.fingerprint, fresh)
        return fresh

    def _emit(self, doc: _Doc, vectors: dict[str, Vector]) -> list[Outgoing]:
        event = doc.event
        if any(c.hash not in vectors for c in doc.chunks):
            return self._unindexable(doc.record, event, InvalidVectors("the encoder returned NaN or inf"))
        ids = chunk_point_ids(event.key, doc.chunks)
        vectors_event = VectorsEvent(
            source=event.source,
            doc_id=event.doc_id,
            op=event.op,
            version=event.version,
            content_hash=doc.content_hash,
            fingerprint=self._encoder.fingerprint,
            metadata=dict(event.metadata),
            emitted_at=event.emitted_at,
            chunks=tuple(
                ChunkRef(pid, c.ordinal, c.hash, c.text) for pid, c in zip(ids, doc.chunks, strict=True)
            ),
            vectors=np.vstack([vectors[c.hash] for c in doc.chunks])
            if doc.chunks
            else np.zeros((0, 0), dtype=np.float32),
        )
        payload = vectors_event.to_bytes()
        if len(payload) > MAX_MESSAGE_BYTES:
            # Deliberate fallback: half-precision on the wire before giving up on the document.
            payload = vectors_event.to_bytes("float16")
        if len(payload) > MAX_MESSAGE_BYTES:
            error = DocumentTooLarge(f"vectors event of {len(payload)} bytes")
            return self._unindexable(doc.record, event, error)
        self._observer.event_out(self.name, event.op)
        return [Outgoing(self._vectors_topic, event.key, payload)]

    def _unindexable(self, record: Record, event: ChangeEvent, error: PoisonError) -> list[Outgoing]:
        """Dead-letter the event, and delete the document's previous version from the index:
        a document that became unindexable must not stay searchable as it was."""
        removal = VectorsEvent(
            source=event.source,
            doc_id=event.doc_id,
            op="delete",
            version=event.version,
            content_hash="",
            fingerprint=self._encoder.fingerprint,
            metadata={UNINDEXABLE: error.reason},
            emitted_at=event.emitted_at,
        )
        self._observer.event_out(self.name, "delete")
        return [
            self._dead_letter(record, error),
            Outgoing(self._vectors_topic, event.key, removal.to_bytes()),
        ]

    def _dead_letter(self, record: Record, error: PoisonError) -> Outgoing:
        self._observer.dead_lettered(self.name, error.reason)
        return dead_letter(record, error, self.name, self._dlq_topic)


def _slices(texts: dict[str, str], sizes: dict[str, int], budget: int) -> Iterator[dict[str, str]]:
    """Longest first, in slices of at most ``budget`` tokens (at least one chunk each), so
    every slice pads little and the cache is written after each."""
    part: dict[str, str] = {}
    used = 0
    for chunk_hash, text in sorted(texts.items(), key=lambda item: -sizes[item[0]]):
        if part and used + sizes[chunk_hash] > budget:
            yield part
            part, used = {}, 0
        part[chunk_hash] = text
        used += sizes[chunk_hash]
    if part:
        yield part
