"""Unit tests for the token-aware, content-defined chunker (with a regex tokenizer fake)."""

from __future__ import annotations

import bisect
import hashlib
import itertools
import re

import pytest

from pipeline.chunking import Chunk, Chunker, ChunkerConfig
from pipeline.hashing import normalize_text, sha256_hex

_TOKEN = re.compile(r"\w+|[^\w\s]")
# fmt: off
WORDS = [
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu",
    "nu", "xi", "omicron", "pi", "rho", "sigma", "tau", "upsilon", "phi", "chi", "psi", "omega",
    "river", "stone", "cloud", "lamp", "paper", "window", "garden", "quiet", "rapid", "yellow",
]
# fmt: on


class RegexTokenizer:
    """Words and punctuation marks are tokens; whitespace never is."""

    def offsets(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in _TOKEN.finditer(text)]


def _n(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "big")


def paragraph(seed: object, p: object) -> str:
    """A deterministic paragraph of 1-4 sentences of 5-15 words each."""
    sentences = []
    for s in range(1 + _n(seed, p, "s") % 4):
        count = 5 + _n(seed, p, s, "n") % 11
        words = [WORDS[_n(seed, p, s, w) % len(WORDS)] for w in range(count)]
        sentences.append(" ".join(words).capitalize() + ".")
    return " ".join(sentences)


def document(seed: object, paragraphs: int = 40) -> list[str]:
    return [paragraph(seed, p) for p in range(paragraphs)]


def join(paragraphs: list[str]) -> str:
    return "\n\n".join(paragraphs)


def edit_one_word(paragraphs: list[str], index: int, seed: object) -> list[str]:
    words = paragraphs[index].split(" ")
    i = _n(seed, "edit") % len(words)
    words[i] = "edited" + ("." if words[i].endswith(".") else "")
    out = list(paragraphs)
    out[index] = " ".join(words)
    assert out != paragraphs
    return out


def changed_hashes(old: list[Chunk], new: list[Chunk]) -> int:
    a, b = {c.hash for c in old}, {c.hash for c in new}
    return max(len(a - b), len(b - a))


def survival(old: list[Chunk], new: list[Chunk]) -> float:
    a = {c.hash for c in old}
    return len(a & {c.hash for c in new}) / len(a)


def chunker(max_tokens: int = 200, overlap: int = 24) -> Chunker:
    return Chunker(RegexTokenizer(), ChunkerConfig(max_tokens, overlap))


def token_range(text: str, chunk: Chunk) -> tuple[int, int]:
    """Indices [first, last) of the tokens a chunk spans."""
    spans = RegexTokenizer().offsets(text)
    starts = [s for s, _ in spans]
    first = bisect.bisect_left(starts, chunk.start)
    last = bisect.bisect_left(starts, chunk.end)
    assert starts[first] == chunk.start, "a chunk must start on a token boundary"
    assert spans[last - 1][1] == chunk.end, "a chunk must end on a token boundary"
    return first, last


CONFIGS = [(200, 24), (64, 8), (32, 16), (16, 0)]
TEXTS = [join(document("a")), join(document("b", 12)), paragraph("single", 0), "one"]


@pytest.mark.parametrize(("max_tokens", "overlap"), CONFIGS)
@pytest.mark.parametrize("text", TEXTS, ids=["40-paras", "12-paras", "one-para", "one-word"])
def test_every_chunk_fits_max_tokens(text: str, max_tokens: int, overlap: int) -> None:
    """No chunk holds more than max_tokens tokens, and Chunk.tokens counts them correctly."""
    chunks = chunker(max_tokens, overlap).chunk(text)
    assert chunks
    tokenizer = RegexTokenizer()
    for chunk in chunks:
        assert chunk.text == text[chunk.start : chunk.end]
        assert chunk.hash == sha256_hex(chunk.text)
        assert len(tokenizer.offsets(chunk.text)) == chunk.tokens <= max_tokens
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))


@pytest.mark.parametrize(("max_tokens", "overlap"), CONFIGS)
@pytest.mark.parametrize("text", TEXTS, ids=["40-paras", "12-paras", "one-para", "one-word"])
def test_bodies_cover_all_tokens_in_order_with_overlap(text: str, max_tokens: int, overlap: int) -> None:
    """Chunk bodies (minus overlap) tile every token once, in order; chunk i>0 starts overlap tokens early."""
    chunks = chunker(max_tokens, overlap).chunk(text)
    total = len(RegexTokenizer().offsets(text))
    body_start = 0
    for i, chunk in enumerate(chunks):
        first, last = token_range(text, chunk)
        expected_first = body_start if i == 0 else max(0, body_start - overlap)
        assert first == expected_first, f"chunk {i} starts at token {first}, expected {expected_first}"
        assert last > body_start, f"chunk {i} has an empty body"
        body_start = last
    assert body_start == total


def test_overlap_text_repeats_previous_chunk_tail() -> None:
    """Each chunk after the first begins with exactly the last overlap tokens of its predecessor."""
    text = join(document("overlap", 20))
    chunks = chunker(64, 8).chunk(text)
    assert len(chunks) > 3
    tokenizer = RegexTokenizer()
    for prev, chunk in itertools.pairwise(chunks):
        prev_tokens = [prev.text[s:e] for s, e in tokenizer.offsets(prev.text)]
        tokens = [chunk.text[s:e] for s, e in tokenizer.offsets(chunk.text)]
        assert tokens[:8] == prev_tokens[-8:]


def test_chunking_is_deterministic() -> None:
    """Chunking the same text twice, with fresh chunkers, yields identical chunks."""
    text = join(document("det"))
    assert chunker().chunk(text) == chunker().chunk(text)
    assert chunker(64, 8).chunk(text) == Chunker(RegexTokenizer(), ChunkerConfig(64, 8)).chunk(text)


def test_long_paragraph_without_sentence_breaks_is_split_by_token_windows() -> None:
    """A 500-word paragraph with no punctuation still becomes chunks of at most max_tokens tokens."""
    words = [WORDS[_n("long", i) % len(WORDS)] for i in range(500)]
    text = " ".join(words)
    chunks = chunker(64, 8).chunk(text)
    assert len(chunks) >= 500 // 56
    assert all(c.tokens <= 64 for c in chunks)
    assert chunks[0].start == 0
    assert chunks[-1].end == len(text)
    # Bodies are whole token windows: every body except the last is a full 56-token window.
    assert all(c.tokens == 64 for c in chunks[1:-1])


def test_default_config_splits_long_paragraph() -> None:
    """With defaults (200/24), a 1000-token paragraph yields several chunks of at most 200 tokens."""
    text = " ".join(WORDS[_n("long2", i) % len(WORDS)] for i in range(1000))
    chunks = chunker().chunk(text)
    assert len(chunks) >= 1000 // 176
    assert max(c.tokens for c in chunks) <= 200


def test_one_word_edit_changes_at_most_three_chunks() -> None:
    """Editing one word in paragraph 20 of a 40-paragraph document changes at most 3 chunk hashes."""
    paragraphs = document(0)
    old = chunker().chunk(join(paragraphs))
    new = chunker().chunk(join(edit_one_word(paragraphs, 20, 0)))
    assert len(old) >= 8
    assert 1 <= changed_hashes(old, new) <= 3


def test_inserting_paragraph_near_start_keeps_most_chunks() -> None:
    """Inserting a paragraph after the first one keeps at least 70% of the original chunk hashes."""
    paragraphs = document(0)
    old = chunker().chunk(join(paragraphs))
    inserted = [paragraphs[0], paragraph(0, "new"), *paragraphs[1:]]
    new = chunker().chunk(join(inserted))
    assert survival(old, new) >= 0.7
    assert survival(old, new) < 1.0


@pytest.mark.parametrize("seed", range(30))
def test_locality_holds_for_many_documents_small_chunks(seed: int) -> None:
    """With 64/8 chunks, edits and inserts stay local over 30 different documents."""
    paragraphs = document(seed)
    old = chunker(64, 8).chunk(join(paragraphs))
    edited = chunker(64, 8).chunk(join(edit_one_word(paragraphs, 20, seed)))
    assert changed_hashes(old, edited) <= 3
    inserted = chunker(64, 8).chunk(join([paragraphs[0], paragraph(seed, "new"), *paragraphs[1:]]))
    assert survival(old, inserted) >= 0.7


def test_one_word_edit_locality_default_config_worst_case() -> None:
    """Default-config chunking re-synchronises within 3 chunks after a one-word edit (seed 8 document)."""
    paragraphs = document(8)
    old = chunker().chunk(join(paragraphs))
    new = chunker().chunk(join(edit_one_word(paragraphs, 20, 8)))
    assert changed_hashes(old, new) <= 3


def test_paragraph_insert_locality_default_config_worst_case() -> None:
    """Default-config chunking keeps >= 70% of chunk hashes after a paragraph insert (seed 142 document)."""
    paragraphs = document(142)
    old = chunker().chunk(join(paragraphs))
    new = chunker().chunk(join([paragraphs[0], paragraph(142, "new"), *paragraphs[1:]]))
    assert survival(old, new) >= 0.7


@pytest.mark.parametrize("text", ["", " ", "\n\n\t  \n", normalize_text("  \r\n  ")])
def test_empty_or_whitespace_text_yields_no_chunks(text: str) -> None:
    """Text without tokens produces an empty chunk list."""
    assert chunker().chunk(text) == []


def test_punctuation_only_text_is_chunked() -> None:
    """Text made only of punctuation tokens still yields a chunk (tokens, not words, count)."""
    chunks = chunker(16, 0).chunk("... !!!")
    assert len(chunks) == 1
    assert chunks[0].text == "... !!!"


@pytest.mark.parametrize(("max_tokens", "overlap"), [(200, 101), (16, 9), (10, 6)])
def test_config_rejects_overlap_over_half(max_tokens: int, overlap: int) -> None:
    """ChunkerConfig refuses an overlap larger than half of max_tokens."""
    with pytest.raises(ValueError, match="overlap_tokens"):
        ChunkerConfig(max_tokens, overlap)


def test_config_accepts_overlap_of_exactly_half() -> None:
    """An overlap of exactly half of max_tokens is allowed and leaves that many body tokens."""
    config = ChunkerConfig(200, 100)
    assert config.body_tokens == 100
    assert ChunkerConfig().body_tokens == 176


@pytest.mark.parametrize("seed", range(0, 300, 3))
def test_locality_holds_for_many_documents_default_config(seed: int) -> None:
    """With the default 200/24 chunks, edits and inserts stay local over 100 documents."""
    paragraphs = document(seed)
    old = chunker().chunk(join(paragraphs))
    edited = chunker().chunk(join(edit_one_word(paragraphs, 20, seed)))
    assert changed_hashes(old, edited) <= 3
    inserted = chunker().chunk(join([paragraphs[0], paragraph(seed, "new"), *paragraphs[1:]]))
    assert survival(old, inserted) >= 0.7
