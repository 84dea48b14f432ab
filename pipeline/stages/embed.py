"""Embed stage: change events in, one vectors event per document out.

Normalizes and chunks each document, looks every chunk hash up in the embedding cache,
encodes only what the cache has never seen for this model, and emits the document's full
chunk set. Unchanged text therefore costs a cache lookup and no model time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.bus import Outgoing, Record
from pipeline.cache import EmbeddingCache, Vector
from pipeline.chunking import Chunk, Chunker
from pipeline.encoder import Encoder
from pipeline.errors import DocumentTooLarge, EmptyDocument, InvalidVectors, PoisonError
from pipeline.events import ChangeEvent, ChunkRef, VectorsEvent
from pipeline.faults import crash_point
from pipeline.hashing import normalize_text, sha256_hex
from pipeline.observe import Observer
from pipeline.planner import chunk_point_ids, plan_encode
from pipeline.settings import LimitsSettings
from pipeline.stages import dead_letter

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 1_000_000  # Kafka's default message.max.bytes


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
    ) -> None:
        self._encoder = encoder
        self._cache = cache
        self._chunker = chunker
        self._limits = limits
        self._vectors_topic = vectors_topic
        self._dlq_topic = dlq_topic
        self._observer = observer

    def handle(self, records: Sequence[Record]) -> list[Outgoing]:
        out: list[Outgoing] = []
        docs: list[_Doc] = []
        for record in records:
            try:
                docs.append(self._prepare(record))
            except PoisonError as error:
                out.append(self._dead_letter(record, error))
        vectors = self._vectors_for([d for d in docs if d.chunks])
        out.extend(message for doc in docs if (message := self._emit(doc, vectors)) is not None)
        log.debug("embedded batch", extra={"records": len(records), "out": len(out)})
        return out

    def _prepare(self, record: Record) -> _Doc:
        event = ChangeEvent.from_bytes(record.value)
        self._observer.event_in(self.name, event.op)
        if event.op == "delete":
            return _Doc(record, event, "", [])
        text = event.text or ""
        if len(text.encode("utf-8")) > self._limits.max_doc_bytes:
            raise DocumentTooLarge(f"text over limits.max_doc_bytes={self._limits.max_doc_bytes}")
        normalized = normalize_text(text)
        if not normalized:
            raise EmptyDocument("text is empty after normalization")
        chunks = self._chunker.chunk(normalized)
        if len(chunks) > self._limits.max_chunks_per_doc:
            msg = f"{len(chunks)} chunks, over limits.max_chunks_per_doc={self._limits.max_chunks_per_doc}"
            raise DocumentTooLarge(msg)
        return _Doc(record, event, sha256_hex(normalized), chunks)

    def _vectors_for(self, docs: Sequence[_Doc]) -> dict[str, Vector]:
        fingerprint = self._encoder.fingerprint
        hashes = [c.hash for d in docs for c in d.chunks]
        known = self._cache.get_many(fingerprint, hashes)
        plan = plan_encode([d.chunks for d in docs], known.keys())
        fresh: dict[str, Vector] = {}
        if plan.to_encode:
            texts = list(plan.to_encode.values())
            started = time.perf_counter()
            matrix = self._encoder.encode_documents(texts)
            self._observer.encode_batch(time.perf_counter() - started)
            finite = [bool(np.isfinite(row).all()) for row in matrix]
            fresh = {h: matrix[i] for i, h in enumerate(plan.to_encode) if finite[i]}
            self._cache.put_many(fingerprint, fresh)
            log.info("encoded chunks", extra={"encoded": len(texts), "reused": plan.reused})
            crash_point("embed.after_encode")
            # The chunker already counted every chunk's tokens; no second tokenizer pass.
            sizes = {c.hash: c.tokens for d in docs for c in d.chunks}
            tokens = sum(sizes[h] for h in plan.to_encode)
            self._observer.chunks(len(fresh), plan.reused, tokens)
        elif plan.reused:
            self._observer.chunks(0, plan.reused, 0)
        return {**known, **fresh}

    def _emit(self, doc: _Doc, vectors: dict[str, Vector]) -> Outgoing | None:
        event = doc.event
        try:
            rows = [vectors[c.hash] for c in doc.chunks] if doc.chunks else []
        except KeyError:
            self._observer.error(self.name, InvalidVectors.reason)
            return self._dead_letter(doc.record, InvalidVectors("the encoder returned NaN or inf"))
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
            vectors=np.vstack(rows) if rows else np.zeros((0, 0), dtype=np.float32),
        )
        payload = vectors_event.to_bytes()
        if len(payload) > MAX_MESSAGE_BYTES:
            # Deliberate fallback: half-precision on the wire before giving up on the document.
            payload = vectors_event.to_bytes("float16")
        if len(payload) > MAX_MESSAGE_BYTES:
            return self._dead_letter(doc.record, DocumentTooLarge(f"vectors event of {len(payload)} bytes"))
        self._observer.event_out(self.name, event.op)
        return Outgoing(self._vectors_topic, event.key, payload)

    def _dead_letter(self, record: Record, error: PoisonError) -> Outgoing:
        self._observer.dead_lettered(self.name, error.reason)
        return dead_letter(record, error, self.name, self._dlq_topic)
