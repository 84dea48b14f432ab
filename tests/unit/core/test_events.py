"""Unit tests for the change-event and vectors-event wire formats."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from pipeline.core.errors import InvalidEvent, PoisonError
from pipeline.core.events import SCHEMA_VERSION, ChangeEvent, ChunkRef, VectorsEvent, doc_key
from pipeline.core.hashing import point_id, sha256_hex


def change(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "source": "fs",
        "doc_id": "notes/a.md",
        "op": "upsert",
        "text": "hello world",
        "metadata": {"title": "A", "tags": ["x", "y"], "n": 3},
        "version": 1_700_000_000_000_000_000,
        "emitted_at": 1700000000.5,
    }
    base.update(overrides)
    return base


def raw(payload: dict[str, object]) -> bytes:
    return json.dumps(payload).encode()


def test_change_event_json_round_trip() -> None:
    """to_bytes then from_bytes gives back an equal event, unicode included."""
    event = ChangeEvent(**change(text="caf\u00e9 \u2014 \U0001f600", content_hash="abc"))  # type: ignore[arg-type]
    again = ChangeEvent.from_bytes(event.to_bytes())
    assert again == event
    assert again.text == "caf\u00e9 \u2014 \U0001f600"
    assert again.schema_version == SCHEMA_VERSION


def test_change_event_delete_round_trip() -> None:
    """A delete event without text survives a round trip."""
    event = ChangeEvent(**change(op="delete", text=None))  # type: ignore[arg-type]
    assert ChangeEvent.from_bytes(event.to_bytes()) == event


def test_change_event_key_is_source_slash_doc_id() -> None:
    """The partition key is 'source/doc_id'."""
    event = ChangeEvent.from_bytes(raw(change()))
    assert event.key == "fs/notes/a.md"
    assert doc_key("s", "d") == "s/d"


@pytest.mark.parametrize(
    "payload",
    [
        b"{not json",
        b"",
        b"[1, 2, 3]",
        b"\xff\xfe\x00garbage",
        b'"just a string"',
    ],
    ids=["broken-json", "empty", "array", "binary", "string"],
)
def test_change_event_invalid_json_raises_invalid_event(payload: bytes) -> None:
    """Bytes that are not a JSON object become InvalidEvent, a PoisonError."""
    with pytest.raises(InvalidEvent) as info:
        ChangeEvent.from_bytes(payload)
    assert isinstance(info.value, PoisonError)


@pytest.mark.parametrize("missing", ["source", "doc_id", "op", "version"])
def test_change_event_missing_field_raises_invalid_event(missing: str) -> None:
    """A change event lacking a required field is rejected and the message names the field."""
    payload = change()
    del payload[missing]
    with pytest.raises(InvalidEvent, match=missing):
        ChangeEvent.from_bytes(raw(payload))


@pytest.mark.parametrize(
    "overrides",
    [
        {"op": "upsert", "text": None},
        {"op": "delete", "text": "still here"},
        {"op": "rename"},
        {"version": -1},
        {"source": ""},
        {"unexpected": 1},
    ],
    ids=[
        "upsert-without-text",
        "delete-with-text",
        "unknown-op",
        "negative-version",
        "empty-source",
        "extra",
    ],
)
def test_change_event_schema_violations_raise_invalid_event(overrides: dict[str, object]) -> None:
    """Upsert without text, delete with text and other schema violations are InvalidEvent."""
    with pytest.raises(InvalidEvent):
        ChangeEvent.from_bytes(raw(change(**overrides)))


def test_change_event_upsert_without_text_field_is_invalid() -> None:
    """An upsert whose text key is absent altogether is InvalidEvent mentioning text."""
    payload = change()
    del payload["text"]
    with pytest.raises(InvalidEvent, match="text"):
        ChangeEvent.from_bytes(raw(payload))


def test_change_event_unknown_schema_version_is_invalid() -> None:
    """A future schema_version is rejected with a message that mentions schema_version."""
    with pytest.raises(InvalidEvent, match="schema_version"):
        ChangeEvent.from_bytes(raw(change(schema_version=SCHEMA_VERSION + 1)))


def test_change_event_none_value_is_invalid() -> None:
    """A record without a value (a tombstone) is InvalidEvent."""
    with pytest.raises(InvalidEvent):
        ChangeEvent.from_bytes(None)


def make_vectors(rows: int, dims: int, text_len: int = 20, seed: int = 0) -> VectorsEvent:
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((rows, dims)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    texts = [(f"chunk {i} " + "lorem ipsum dolor sit amet " * 40)[:text_len] for i in range(rows)]
    chunks = tuple(
        ChunkRef(point_id("fs/a.md", sha256_hex(t), 0), i, sha256_hex(t), t) for i, t in enumerate(texts)
    )
    return VectorsEvent(
        source="fs",
        doc_id="a.md",
        op="upsert",
        version=42,
        content_hash=sha256_hex("doc"),
        fingerprint="fake@0123456789abcdef",
        metadata={"title": "A \u00e9", "n": 1},
        emitted_at=1700000000.25,
        chunks=chunks,
        vectors=matrix,
    )


def assert_same_header(a: VectorsEvent, b: VectorsEvent) -> None:
    assert (a.source, a.doc_id, a.op, a.version, a.content_hash, a.fingerprint) == (
        b.source, b.doc_id, b.op, b.version, b.content_hash, b.fingerprint,
    )  # fmt: skip
    assert a.metadata == b.metadata
    assert a.emitted_at == b.emitted_at
    assert a.chunks == b.chunks
    assert a.key == b.key == "fs/a.md"


def test_vectors_event_float32_round_trip_is_exact() -> None:
    """A float32 vectors event decodes to bit-identical vectors and identical header fields."""
    event = make_vectors(5, 8)
    again = VectorsEvent.from_bytes(event.to_bytes())
    assert_same_header(event, again)
    assert again.vectors.dtype == np.float32
    assert again.vectors.shape == (5, 8)
    assert np.array_equal(again.vectors, event.vectors)


def test_vectors_event_float16_round_trip_is_approximate() -> None:
    """float16 on the wire halves the matrix bytes and decodes to float32 within 1e-3."""
    event = make_vectors(5, 8)
    half = event.to_bytes("float16")
    again = VectorsEvent.from_bytes(half)
    assert_same_header(event, again)
    assert again.vectors.dtype == np.float32
    assert np.allclose(again.vectors, event.vectors, atol=1e-3)
    assert len(event.to_bytes()) - len(half) == 5 * 8 * 2


def test_vectors_event_delete_round_trip() -> None:
    """A delete vectors event with no chunks and an empty matrix round trips."""
    event = VectorsEvent("fs", "a.md", "delete", 7, "", "fp", {}, 1.0)
    again = VectorsEvent.from_bytes(event.to_bytes())
    assert again.op == "delete"
    assert again.chunks == ()
    assert again.vectors.shape == (0, 0)


def test_large_vectors_event_fits_kafka_default_limit() -> None:
    """300 chunks x 384 dims with ~600-char texts encode under 1_000_000 bytes in float32."""
    event = make_vectors(300, 384, text_len=600)
    assert all(len(c.text) == 600 for c in event.chunks)
    payload = event.to_bytes()
    assert len(payload) < 1_000_000
    assert np.array_equal(VectorsEvent.from_bytes(payload).vectors, event.vectors)


def _with_header(header: object, body: bytes = b"") -> bytes:
    head = json.dumps(header).encode()
    return b"ESV1" + struct.pack("<I", len(head)) + head + body


def _valid_header(**changes: object) -> dict[str, object]:
    event = make_vectors(2, 4)
    data = event.to_bytes()
    (size,) = struct.unpack_from("<I", data, 4)
    parsed: dict[str, object] = json.loads(data[8 : 8 + size])
    parsed.update(changes)
    return parsed


@pytest.mark.parametrize(
    "payload",
    [
        None,
        b"",
        b"garbage bytes",
        b"ESV1",
        b"ESV1\xff\xff\xff\xff",
        b"ESV1\x05\x00\x00\x00{bad}",
        _with_header([1, 2]),
        _with_header(None),
        _with_header(_valid_header(), b"\x00" * 3),
        _with_header(_valid_header(dtype="int8"), b"\x00" * 32),
        _with_header(_valid_header(shape=[2, 4, 1]), b"\x00" * 32),
        _with_header(_valid_header(chunks=[["only-two", 0]]), b"\x00" * 32),
        _with_header(_valid_header(schema_version=SCHEMA_VERSION + 1), b"\x00" * 32),
    ],
    ids=[
        "none", "empty", "no-magic", "magic-only", "huge-header-length", "bad-json", "list-header",
        "null-header", "short-body", "unknown-dtype", "bad-shape", "bad-chunks", "future-schema",
    ],
)  # fmt: skip
def test_vectors_event_garbage_raises_invalid_event(payload: bytes | None) -> None:
    """Anything that is not a well-formed vectors event becomes InvalidEvent (so it is dead-lettered)."""
    with pytest.raises(InvalidEvent):
        VectorsEvent.from_bytes(payload)


def test_vectors_event_header_without_schema_version_raises_invalid_event() -> None:
    """A vectors header missing schema_version is InvalidEvent, not a bare KeyError."""
    header = _valid_header()
    del header["schema_version"]
    with pytest.raises(InvalidEvent):
        VectorsEvent.from_bytes(_with_header(header, b"\x00" * 32))
