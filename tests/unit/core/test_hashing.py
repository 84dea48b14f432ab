"""Unit tests for text normalization, content hashes and deterministic point ids."""

from __future__ import annotations

import unicodedata
import uuid

import pytest

from pipeline.core.hashing import content_hash, doc_state_id, normalize_text, point_id, sha256_hex

SAMPLES = [
    "plain text",
    "  leading and trailing  \n\n",
    "line one\r\nline two\rline three",
    "trailing spaces   \nand tabs\t\t\nend",
    "para one\n\n\n\n\npara two",
    "caf\u0065\u0301 au lait",
    "nul\x00byte",
    "",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_normalize_text_is_idempotent(text: str) -> None:
    """Normalizing an already-normalized text changes nothing."""
    once = normalize_text(text)
    assert normalize_text(once) == once


def test_normalize_folds_crlf_and_lone_cr() -> None:
    """Windows and old-Mac line endings become plain newlines."""
    assert normalize_text("a\r\nb\rc") == "a\nb\nc"


def test_normalize_strips_trailing_spaces_and_tabs() -> None:
    """Spaces and tabs before a line break are removed."""
    assert normalize_text("a  \t\nb\t \nc") == "a\nb\nc"


def test_normalize_collapses_blank_line_runs() -> None:
    """Three or more newlines collapse to one blank line, two are kept."""
    assert normalize_text("a\n\n\n\n\nb") == "a\n\nb"
    assert normalize_text("a\n\nb") == "a\n\nb"
    assert normalize_text("a\nb") == "a\nb"


def test_normalize_applies_nfc() -> None:
    """Decomposed Unicode is composed so both spellings normalize identically."""
    decomposed = "cafe\u0301"
    composed = "caf\u00e9"
    assert decomposed != composed
    assert normalize_text(decomposed) == composed
    assert unicodedata.is_normalized("NFC", normalize_text(decomposed))


def test_normalize_strips_outer_whitespace_and_nul() -> None:
    """Leading/trailing whitespace and NUL characters are dropped."""
    assert normalize_text("\n\n  hello\x00 world  \n\n") == "hello world"
    assert normalize_text(" \r\n\t\n ") == ""


def test_content_hash_ignores_cosmetic_differences() -> None:
    """CRLF, trailing spaces, extra blank lines and NFD produce the same content hash."""
    base = "Title caf\u00e9\n\nBody line one\nBody line two"
    cosmetic = "Title cafe\u0301  \r\n\r\n\r\n\r\nBody line one\t\r\nBody line two\n\n"
    assert content_hash(base) == content_hash(cosmetic)
    assert content_hash(base) == sha256_hex(normalize_text(base))


def test_content_hash_changes_for_real_edits() -> None:
    """A changed word, added punctuation or joined paragraphs change the content hash."""
    base = "Title\n\nBody line one\nBody line two"
    edits = [
        "Title\n\nBody line one\nBody line 2",
        "Title.\n\nBody line one\nBody line two",
        "Title\nBody line one\nBody line two",
        "title\n\nBody line one\nBody line two",
    ]
    hashes = {content_hash(e) for e in edits}
    assert content_hash(base) not in hashes
    assert len(hashes) == len(edits)


def test_content_hash_is_hex_sha256() -> None:
    """Content hashes are 64 lowercase hex digits."""
    value = content_hash("anything")
    assert len(value) == 64
    int(value, 16)
    assert value == value.lower()


def test_point_id_is_deterministic_uuid() -> None:
    """The same (doc, chunk, occurrence) always gives the same valid UUID string."""
    first = point_id("fs/a.md", "h" * 64, 0)
    assert first == point_id("fs/a.md", "h" * 64, 0)
    assert str(uuid.UUID(first)) == first


def test_point_id_distinct_per_occurrence_chunk_and_doc() -> None:
    """Occurrence, chunk hash and document key each separate point ids."""
    ids = {
        point_id("fs/a.md", "h1", 0),
        point_id("fs/a.md", "h1", 1),
        point_id("fs/a.md", "h2", 0),
        point_id("fs/b.md", "h1", 0),
        point_id("other/a.md", "h1", 0),
    }
    assert len(ids) == 5


def test_point_id_fields_do_not_run_together() -> None:
    """Keys whose concatenation is equal still get different ids (fields are separated)."""
    assert point_id("ab", "c", 0) != point_id("a", "bc", 0)


def test_doc_state_id_is_deterministic_and_distinct_from_point_ids() -> None:
    """The bookkeeping id is stable per document and never equals a chunk's point id."""
    key = "fs/a.md"
    assert doc_state_id(key) == doc_state_id(key)
    assert doc_state_id(key) != doc_state_id("fs/b.md")
    chunk_ids = {point_id(key, h, n) for h in ("h1", "h2", "") for n in range(3)}
    assert doc_state_id(key) not in chunk_ids
    assert str(uuid.UUID(doc_state_id(key))) == doc_state_id(key)
