"""The two messages that flow through the pipeline, and their wire formats.

``ChangeEvent`` (``<prefix>.changes``) is JSON: written by many connectors, read by humans
in the DLQ. ``VectorsEvent`` (``<prefix>.vectors.<index>-v<N>``) is a small JSON header
followed by the raw little-endian vector matrix, because JSON float lists would be 4-5x
larger and a 300-chunk document must fit Kafka's default 1 MB message limit.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, model_validator

from pipeline.core.errors import InvalidEvent

SCHEMA_VERSION = 1
Op = Literal["upsert", "delete"]
Matrix = npt.NDArray[np.float32]


def normalize_rows(matrix: Matrix) -> Matrix:
    """Row-wise L2 normalization with torch's epsilon (``F.normalize``), so both agree."""
    norms = np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    normalized: Matrix = (matrix / norms).astype(np.float32)
    return normalized


class ChangeEvent(BaseModel):
    """One document's new state, or its deletion, as a source saw it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = SCHEMA_VERSION
    source: str = Field(min_length=1, max_length=200, pattern=r"^[^/]+$")
    doc_id: str = Field(min_length=1, max_length=2000)
    op: Op
    text: str | None = None
    metadata: dict[str, JsonValue] = Field(default_factory=dict)
    version: int = Field(ge=0, lt=2**63, description="Monotonic per document: mtime_ns, updated_at, LSN")
    content_hash: str | None = None
    emitted_at: float = Field(default_factory=time.time)

    @model_validator(mode="after")
    def _text_matches_op(self) -> ChangeEvent:
        if self.schema_version != SCHEMA_VERSION:
            msg = f"unknown schema_version {self.schema_version} (this build reads {SCHEMA_VERSION})"
            raise ValueError(msg)
        if self.op == "upsert" and self.text is None:
            raise ValueError("an upsert needs text")
        if self.op == "delete" and self.text is not None:
            raise ValueError("a delete carries no text")
        return self

    @property
    def key(self) -> str:
        return doc_key(self.source, self.doc_id)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode("utf-8")

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> ChangeEvent:
        """Parse a change event; anything malformed becomes :class:`InvalidEvent`."""
        if raw is None:
            raise InvalidEvent("empty message (a tombstone?) on the changes topic")
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "event"
            raise InvalidEvent(f"{where}: {first['msg']}") from exc


def doc_key(source: str, doc_id: str) -> str:
    return f"{source}/{doc_id}"


def split_key(key: str) -> tuple[str, str]:
    """(source, doc_id) of a document key; source names never contain "/"."""
    source, _, doc_id = key.partition("/")
    return source, doc_id


@dataclass(frozen=True)
class ChunkRef:
    """One chunk of a vectors event; its vector is row ``ordinal`` of the matrix."""

    point_id: str
    ordinal: int
    chunk_hash: str
    text: str


#: Metadata key of the delete the embed stage sends for a document it dead-letters (it must
#: lose its old points): the reason. The sink then reports no outcome of its own for it.
UNINDEXABLE = "unindexable"
_MAGIC = b"ESV1"
_HEADER_LEN = struct.Struct("<I")
_WIRE_DTYPES = {"float32": "<f4", "float16": "<f2"}


@dataclass(frozen=True, eq=False)
class VectorsEvent:
    """A document's full chunk set with full-dimension vectors (or its deletion).

    Vectors are always the encoder's full-dimension output: truncation and storage
    datatype are chosen per index version by the sink, so one vectors log serves them all.
    """

    source: str
    doc_id: str
    op: Op
    version: int
    content_hash: str
    fingerprint: str
    metadata: dict[str, Any]
    emitted_at: float
    chunks: tuple[ChunkRef, ...] = ()
    vectors: Matrix = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))

    @property
    def key(self) -> str:
        return doc_key(self.source, self.doc_id)

    def to_bytes(self, wire_dtype: Literal["float32", "float16"] = "float32") -> bytes:
        matrix = np.ascontiguousarray(self.vectors, dtype=_WIRE_DTYPES[wire_dtype])
        header = {
            "schema_version": SCHEMA_VERSION,
            "source": self.source,
            "doc_id": self.doc_id,
            "op": self.op,
            "version": self.version,
            "content_hash": self.content_hash,
            "fingerprint": self.fingerprint,
            "metadata": self.metadata,
            "emitted_at": self.emitted_at,
            "dtype": wire_dtype,
            "shape": list(matrix.shape),
            "chunks": [[c.point_id, c.ordinal, c.chunk_hash, c.text] for c in self.chunks],
        }
        head = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return _MAGIC + _HEADER_LEN.pack(len(head)) + head + matrix.tobytes()

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> VectorsEvent:
        if raw is None or raw[:4] != _MAGIC:
            raise InvalidEvent("not a vectors event (bad magic)")
        try:
            (size,) = _HEADER_LEN.unpack_from(raw, 4)
            header = json.loads(raw[8 : 8 + size])
            rows, dims = header["shape"]
            body = raw[8 + size :]
            matrix = np.frombuffer(body, dtype=_WIRE_DTYPES[header["dtype"]]).reshape(rows, dims)
            chunks = tuple(ChunkRef(p, int(o), h, t) for p, o, h, t in header["chunks"])
            schema_version = header["schema_version"]
            event = cls(
                source=header["source"],
                doc_id=header["doc_id"],
                op=header["op"],
                version=int(header["version"]),
                content_hash=header["content_hash"],
                fingerprint=header["fingerprint"],
                metadata=header["metadata"],
                emitted_at=float(header["emitted_at"]),
                chunks=chunks,
                vectors=matrix.astype(np.float32),
            )
        except (ValueError, KeyError, TypeError, struct.error) as exc:
            raise InvalidEvent(f"malformed vectors event: {exc}") from exc
        if schema_version != SCHEMA_VERSION:
            raise InvalidEvent(f"unknown vectors schema_version {schema_version}")
        return event
