"""Unit tests for the embed stage with a fake encoder, a real SQLite cache and a regex tokenizer."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from pipeline.bus import Outgoing, Record
from pipeline.config.settings import LimitsSettings
from pipeline.core.chunking import Chunker, ChunkerConfig
from pipeline.core.events import ChangeEvent, VectorsEvent
from pipeline.core.hashing import normalize_text, sha256_hex
from pipeline.encoding import Encoder
from pipeline.encoding.cache import SqliteEmbeddingCache
from pipeline.observability import RunStats
from pipeline.stages.embed import EmbedStage

CHANGES, VECTORS, DLQ = "es.changes", "es.vectors.docs-v1", "es.dlq"
DIMS = 8
_TOKEN = re.compile(r"\w+|[^\w\s\u200b]")  # like BERT, zero-width spaces are no token


class RegexTokenizer:
    def offsets(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in _TOKEN.finditer(text)]


class FakeEncoder:
    """Deterministic 8-dim unit vectors from sha256 of the text; counts what it encodes."""

    def __init__(self, fingerprint: str = "fake@0000000000000000", poison: str | None = None) -> None:
        self._fingerprint = fingerprint
        self.poison = poison
        self.calls = 0
        self.encoded: list[str] = []
        self._tokenizer = RegexTokenizer()

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def max_tokens(self) -> int:
        return 256

    def offsets(self, text: str) -> list[tuple[int, int]]:
        return self._tokenizer.offsets(text)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(self.offsets(t)) + 2 for t in texts]

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:  # type: ignore[type-arg]
        self.calls += 1
        self.encoded.extend(texts)
        return np.vstack([self.vector(t) for t in texts]).astype(np.float32)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:  # type: ignore[type-arg]
        return np.vstack([self.vector(t) for t in texts]).astype(np.float32)

    def vector(self, text: str) -> np.ndarray:  # type: ignore[type-arg]
        if self.poison is not None and self.poison in text:
            return np.full(DIMS, np.nan, dtype=np.float32)
        raw = np.frombuffer(hashlib.sha256(text.encode()).digest()[:DIMS], dtype=np.uint8).astype(np.float32)
        centered = raw - 127.5
        return (centered / np.linalg.norm(centered)).astype(np.float32)


def _conforms(encoder: Encoder) -> Encoder:
    return encoder


class Harness:
    def __init__(self, tmp_path: Path, encoder: FakeEncoder | None = None, **limits: int) -> None:
        self.encoder = encoder or FakeEncoder()
        self.cache = SqliteEmbeddingCache(tmp_path / "cache.sqlite")
        self.chunker = Chunker(RegexTokenizer(), ChunkerConfig(max_tokens=32, overlap_tokens=4))
        self.stats = RunStats()
        self.limits = LimitsSettings(**limits)
        self.stage = self.make_stage(self.encoder)
        self.offset = 0

    def make_stage(self, encoder: FakeEncoder) -> EmbedStage:
        return EmbedStage(_conforms(encoder), self.cache, self.chunker, self.limits, VECTORS, DLQ, self.stats)

    def record(self, value: bytes | None, key: str | None = None) -> Record:
        """A changes-topic record, keyed by its document (as every producer keys it)."""
        self.offset += 1
        if key is None:
            key = ChangeEvent.from_bytes(value).key if value is not None else "fs/x"
        return Record(CHANGES, 3, self.offset, key, value)


def upsert(doc_id: str, text: str, version: int = 1, **metadata: object) -> bytes:
    event = ChangeEvent(
        source="fs", doc_id=doc_id, op="upsert", text=text, version=version, metadata=metadata
    )  # type: ignore[arg-type]
    return event.to_bytes()


def delete(doc_id: str, version: int = 2) -> bytes:
    return ChangeEvent(source="fs", doc_id=doc_id, op="delete", version=version).to_bytes()


def para(tag: str, words: int = 20) -> str:
    return " ".join(f"{tag}{i}" for i in range(words)) + "."


def vectors_out(out: Sequence[Outgoing]) -> list[VectorsEvent]:
    return [VectorsEvent.from_bytes(m.value) for m in out if m.topic == VECTORS]


def dead(out: Sequence[Outgoing]) -> list[Outgoing]:
    return [m for m in out if m.topic == DLQ]


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.cache.close()


def test_happy_path_emits_full_chunk_set_with_fake_vectors(h: Harness) -> None:
    """An upsert yields one vectors event with every chunk, its point id and the encoder's vector."""
    text = "\n\n".join(para(t) for t in "abcde")
    out = h.stage.handle([h.record(upsert("a.md", text, version=7, title="A"), key="fs/a.md")])
    (event,) = vectors_out(out)
    chunks = h.chunker.chunk(normalize_text(text))
    assert len(chunks) > 1
    assert event.key == "fs/a.md"
    assert event.op == "upsert"
    assert event.version == 7
    assert event.metadata == {"title": "A"}
    assert event.content_hash == sha256_hex(normalize_text(text))
    assert event.fingerprint == h.encoder.fingerprint
    assert [c.text for c in event.chunks] == [c.text for c in chunks]
    assert len({c.point_id for c in event.chunks}) == len(chunks)
    assert event.vectors.shape == (len(chunks), DIMS)
    for ref, row in zip(event.chunks, event.vectors, strict=True):
        assert np.array_equal(row, h.encoder.vector(ref.text))
    assert out[0].key == "fs/a.md"


def test_poison_records_go_to_dlq_with_headers_and_valid_ones_still_emit(h: Harness) -> None:
    """Invalid JSON, oversized and empty docs are dead-lettered with context (and the parsed ones
    deleted from the index); valid neighbours still emit."""
    h.limits = LimitsSettings(max_doc_bytes=500)
    h.stage = h.make_stage(h.encoder)
    bad_json = h.record(b"{this is not json", key="fs/bad")
    good1 = h.record(upsert("one.md", para("one")), key="fs/one.md")
    too_big = h.record(upsert("big.md", "x " * 400), key="fs/big.md")
    good2 = h.record(upsert("two.md", para("two")), key="fs/two.md")
    empty = h.record(upsert("empty.md", "  \r\n\n\t \n"), key="fs/empty.md")
    good3 = h.record(delete("gone.md"), key="fs/gone.md")
    out = h.stage.handle([bad_json, good1, too_big, good2, empty, good3])

    letters = {m.key: m for m in dead(out)}
    assert set(letters) == {"fs/bad", "fs/big.md", "fs/empty.md"}
    expected = {
        "fs/bad": (bad_json, "InvalidEvent", "invalid_event"),
        "fs/big.md": (too_big, "DocumentTooLarge", "too_large"),
        "fs/empty.md": (empty, "EmptyDocument", "empty_text"),
    }
    for key, (record, cls, reason) in expected.items():
        message = letters[key]
        headers = dict(message.headers)
        assert headers["error.class"] == cls.encode()
        assert headers["error.reason"] == reason.encode()
        assert headers["stage"] == b"embed"
        assert headers["original.topic"] == CHANGES.encode()
        assert headers["original.partition"] == b"3"
        assert headers["original.offset"] == str(record.offset).encode()
        assert headers["error.message"]
        assert message.value == record.value
    emitted = vectors_out(out)
    assert [(e.key, e.op) for e in emitted] == [
        ("fs/one.md", "upsert"), ("fs/big.md", "delete"), ("fs/two.md", "upsert"),
        ("fs/empty.md", "delete"), ("fs/gone.md", "delete"),
    ]  # fmt: skip
    assert h.stats.dead == {"invalid_event": 1, "too_large": 1, "empty_text": 1}


def test_too_many_chunks_is_dead_lettered(tmp_path: Path) -> None:
    """A document with more chunks than limits.max_chunks_per_doc goes to the DLQ as too_large."""
    h = Harness(tmp_path, max_chunks_per_doc=2)
    text = "\n\n".join(para(t, 30) for t in "abcdef")
    out = h.stage.handle([h.record(upsert("many.md", text, version=4))])
    (removal,) = vectors_out(out)
    assert (removal.key, removal.op, removal.version) == ("fs/many.md", "delete", 4)
    (letter,) = dead(out)
    assert dict(letter.headers)["error.reason"] == b"too_large"
    assert h.encoder.calls == 0
    h.cache.close()


def test_none_value_is_dead_lettered(h: Harness) -> None:
    """A record without a value on the changes topic is dead-lettered as invalid_event."""
    out = h.stage.handle([h.record(None, key="fs/tomb")])
    (letter,) = dead(out)
    assert dict(letter.headers)["error.reason"] == b"invalid_event"
    assert letter.value is None


def test_rehandling_same_upsert_encodes_nothing(h: Harness) -> None:
    """Replaying an upsert hits the cache for every chunk: no encoder call, same vectors."""
    value = upsert("a.md", "\n\n".join(para(t) for t in "abc"))
    first = vectors_out(h.stage.handle([h.record(value)]))
    calls, encoded = h.encoder.calls, len(h.encoder.encoded)
    assert calls == 1
    assert encoded == len(first[0].chunks)
    second = vectors_out(h.stage.handle([h.record(value)]))
    assert h.encoder.calls == calls
    assert len(h.encoder.encoded) == encoded
    assert np.array_equal(first[0].vectors, second[0].vectors)
    assert [c.point_id for c in first[0].chunks] == [c.point_id for c in second[0].chunks]
    assert h.stats.reused == len(first[0].chunks)


def test_cache_survives_a_new_stage_and_connection(tmp_path: Path) -> None:
    """A new stage over the same cache file re-encodes nothing for text it has seen."""
    value = upsert("a.md", "\n\n".join(para(t) for t in "abc"))
    first = Harness(tmp_path)
    first.stage.handle([first.record(value)])
    first.cache.close()
    second = Harness(tmp_path)
    out = vectors_out(second.stage.handle([second.record(value)]))
    assert second.encoder.calls == 0
    assert len(out[0].chunks) >= 1
    second.cache.close()


def test_shared_paragraph_chunk_is_encoded_once_in_one_batch(h: Harness) -> None:
    """Two documents whose first chunk is the same paragraph encode that chunk once per batch."""
    shared = para("shared", 27)  # 28 tokens = one full chunk body
    a = h.record(upsert("a.md", shared + "\n\n" + para("onlya")))
    b = h.record(upsert("b.md", shared + "\n\n" + para("onlyb")))
    out = vectors_out(h.stage.handle([a, b]))
    assert out[0].chunks[0].text == out[1].chunks[0].text == shared
    assert h.encoder.encoded.count(shared) == 1
    assert len(h.encoder.encoded) == len(set(h.encoder.encoded))
    assert h.stats.reused == 1
    assert np.array_equal(out[0].vectors[0], out[1].vectors[0])
    assert out[0].chunks[0].point_id != out[1].chunks[0].point_id


def test_shared_paragraph_chunk_is_encoded_once_across_batches(h: Harness) -> None:
    """A chunk already encoded for one document is reused from the cache for a later document."""
    shared = para("shared", 27)
    h.stage.handle([h.record(upsert("a.md", shared + "\n\n" + para("onlya")))])
    after_first = len(h.encoder.encoded)
    out = vectors_out(h.stage.handle([h.record(upsert("b.md", shared + "\n\n" + para("onlyb")))]))
    second_batch = h.encoder.encoded[after_first:]
    assert h.encoder.encoded.count(shared) == 1
    assert shared not in second_batch
    assert second_batch == [c.text for c in out[0].chunks[1:]]


def test_different_fingerprint_reencodes(h: Harness) -> None:
    """A second encoder with another fingerprint does not reuse the first one's cached vectors."""
    value = upsert("a.md", "\n\n".join(para(t) for t in "abc"))
    first = vectors_out(h.stage.handle([h.record(value)]))
    other = FakeEncoder(fingerprint="other@ffffffffffffffff")
    second = vectors_out(h.make_stage(other).handle([h.record(value)]))
    assert other.calls == 1
    assert sorted(other.encoded) == sorted(c.text for c in first[0].chunks)
    assert second[0].fingerprint == "other@ffffffffffffffff"
    assert h.cache.count("other@ffffffffffffffff") == h.cache.count(h.encoder.fingerprint) > 0


def test_nan_vector_dead_letters_only_its_document(h: Harness) -> None:
    """A NaN row from the encoder dead-letters the one document containing it as invalid_vectors."""
    h.encoder.poison = "POISON"
    records = [
        h.record(upsert("a.md", para("clean")), key="fs/a.md"),
        h.record(upsert("b.md", para("ok") + "\n\n" + "POISON " + para("bad", 10)), key="fs/b.md"),
        h.record(upsert("c.md", para("fine")), key="fs/c.md"),
    ]
    out = h.stage.handle(records)
    assert [(e.key, e.op) for e in vectors_out(out)] == [
        ("fs/a.md", "upsert"),
        ("fs/b.md", "delete"),
        ("fs/c.md", "upsert"),
    ]
    (letter,) = dead(out)
    assert letter.key == "fs/b.md"
    assert dict(letter.headers)["error.reason"] == b"invalid_vectors"
    assert dict(letter.headers)["error.class"] == b"InvalidVectors"
    assert letter.value == records[1].value
    # The NaN vector was not cached, the good ones were.
    poisoned = [t for t in h.encoder.encoded if "POISON" in t]
    assert poisoned
    assert h.cache.get_many(h.encoder.fingerprint, [sha256_hex(t) for t in poisoned]) == {}
    assert all(np.isfinite(e.vectors).all() for e in vectors_out(out))


def test_delete_passes_through_as_delete_vectors_event(h: Harness) -> None:
    """A delete change becomes an op=delete vectors event with no chunks and no encoder call."""
    out = h.stage.handle([h.record(delete("a.md", version=9), key="fs/a.md")])
    (event,) = vectors_out(out)
    assert event.op == "delete"
    assert event.key == "fs/a.md"
    assert event.version == 9
    assert event.chunks == ()
    assert event.vectors.size == 0
    assert event.fingerprint == h.encoder.fingerprint
    assert h.encoder.calls == 0
    assert out[0].key == "fs/a.md"


def test_vectors_event_header_is_json_readable(h: Harness) -> None:
    """The emitted payload starts with the ESV1 magic and a JSON header carrying the doc identity."""
    out = h.stage.handle([h.record(upsert("a.md", para("x")))])
    payload = out[0].value
    assert payload is not None
    assert payload[:4] == b"ESV1"
    size = int.from_bytes(payload[4:8], "little")
    header = json.loads(payload[8 : 8 + size])
    assert (header["source"], header["doc_id"], header["dtype"]) == ("fs", "a.md", "float32")


def test_a_key_that_is_not_utf8_is_dead_lettered_with_its_bytes(h: Harness) -> None:
    """A record key that is not UTF-8 (decoded with surrogateescape) is poison, not a crash."""
    key = b"fs/\xff\xfe".decode("utf-8", "surrogateescape")
    out = h.stage.handle([h.record(upsert("a.md", para("a")), key=key), h.record(upsert("b.md", para("b")))])
    (letter,) = dead(out)
    assert letter.key == key
    assert dict(letter.headers)["error.reason"] == b"invalid_event"
    assert [e.key for e in vectors_out(out)] == ["fs/b.md"]


def test_a_record_keyed_by_another_document_is_dead_lettered(h: Harness) -> None:
    """Per-document order holds only for records keyed by their document: others are poison."""
    out = h.stage.handle([h.record(upsert("a.md", para("a")), key="fs/b.md")])
    (letter,) = dead(out)
    assert b"not the event's source/doc_id" in dict(letter.headers)["error.message"]
    assert vectors_out(out) == []


def test_a_document_with_no_readable_words_is_poison_and_removed(h: Harness) -> None:
    """Text that normalizes to something but tokenizes to nothing (zero-width spaces) is dead-lettered
    as empty and deleted, never sent to the sink as a zero-dimension document."""
    out = h.stage.handle([h.record(upsert("zw.md", "\u200b\u200b\u200b", version=3))])
    (letter,) = dead(out)
    assert dict(letter.headers)["error.reason"] == b"empty_text"
    (removal,) = vectors_out(out)
    assert (removal.op, removal.version, removal.chunks) == ("delete", 3, ())


def test_a_dead_letter_carries_a_bounded_prefix_of_a_huge_record(h: Harness) -> None:
    """A 3 MB poison value and a 5 KB key become a dead letter of at most 64 KiB, marked truncated."""
    from pipeline.bus.dead_letters import DLQ_KEY_CHARS, DLQ_VALUE_BYTES

    value = b"{" + b"x" * 3_000_000
    out = h.stage.handle([h.record(value, key="fs/" + "k" * 5000)])
    (letter,) = dead(out)
    headers = dict(letter.headers)
    assert letter.value == value[:DLQ_VALUE_BYTES]
    assert len(letter.key) == DLQ_KEY_CHARS
    assert headers["original.truncated"] == b"true"
    assert headers["original.bytes"] == str(len(value)).encode()


class FailingEncoder(FakeEncoder):
    """Encodes ``good_calls`` slices, then dies as a killed process would."""

    def __init__(self, good_calls: int) -> None:
        super().__init__()
        self.good_calls = good_calls

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:  # type: ignore[type-arg]
        if self.calls >= self.good_calls:
            raise KeyboardInterrupt
        return super().encode_documents(texts)


def test_encoding_is_cached_slice_by_slice_so_a_crash_keeps_finished_work(tmp_path: Path) -> None:
    """A batch is encoded in bounded slices and each slice is cached at once: dying in the second
    slice keeps the first slice's vectors, and the retry encodes only the rest."""
    dying = FailingEncoder(good_calls=1)
    h = Harness(tmp_path, encoder=dying)
    h.stage = EmbedStage(dying, h.cache, h.chunker, h.limits, VECTORS, DLQ, h.stats, encode_slice_tokens=64)
    records = [h.record(upsert(f"d{i}.md", para(f"doc{i}", 25))) for i in range(6)]
    with pytest.raises(KeyboardInterrupt):
        h.stage.handle(records)
    kept = h.cache.count(dying.fingerprint)
    assert 0 < kept == len(dying.encoded)
    retry = FakeEncoder()
    out = EmbedStage(retry, h.cache, h.chunker, h.limits, VECTORS, DLQ, h.stats).handle(records)
    assert len(vectors_out(out)) == 6
    assert set(retry.encoded).isdisjoint(dying.encoded)
    h.cache.close()
