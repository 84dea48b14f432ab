"""Deterministic, token-aware chunking with content-defined boundaries.

A chunk is a span of the normalized text measured in the model's own tokens. Boundaries
fall on paragraph (then sentence, then token) edges and are chosen from local content:
a paragraph whose hash marks it as an anchor always ends a chunk (a heading-sized one
never does, so headings stay with their section). Greedy packing alone would shift every
later boundary when one early paragraph grows; with anchors, a boundary depends only on
the paragraphs since the previous anchor, so a local edit re-encodes only the chunks
around it.

Chunks are bounded in characters too, not only in tokens: a tokenizer may cover any run of
text with one token (BERT's WordPiece makes a single ``[UNK]`` of every word over 100
characters, and drops zero-width characters inside a word), so a 500 KB "word" would be one
token and one 500 KB chunk payload. Token spans and the gaps between them are cut into
pieces of at most :data:`MAX_TOKEN_CHARS` characters, each counted as a token.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from pipeline.core.hashing import sha256_hex

Span = tuple[int, int]

# A chunk of max_tokens pieces then holds at most 2 * MAX_TOKEN_CHARS * max_tokens characters
# (a piece and the gap before it); real tokens are a few characters, so ordinary text is
# untouched. Counting a piece as a token only makes chunks smaller than the model could
# read, never larger.
MAX_TOKEN_CHARS = 16

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+|\n")


class Tokenizer(Protocol):
    """Character spans of the tokens of ``text``, in order, without special tokens.

    A tokenizer that also has ``note_chunks(text, spans)`` hears where each text was cut
    (right after its ``offsets``), so it can reuse that tokenization when the chunks are
    encoded instead of tokenizing each chunk again (the encoder does).
    """

    def offsets(self, text: str) -> list[Span]: ...


@dataclass(frozen=True)
class Chunk:
    ordinal: int
    start: int
    end: int
    text: str
    hash: str
    tokens: int


@dataclass(frozen=True)
class ChunkerConfig:
    max_tokens: int = 200
    overlap_tokens: int = 24

    def __post_init__(self) -> None:
        if self.overlap_tokens * 2 > self.max_tokens:
            msg = "chunking.overlap_tokens must be at most half of chunking.max_tokens"
            raise ValueError(msg)

    @property
    def body_tokens(self) -> int:
        return self.max_tokens - self.overlap_tokens


class Chunker:
    """Splits normalized text into :class:`Chunk` s; pure given its tokenizer."""

    def __init__(self, tokenizer: Tokenizer, config: ChunkerConfig) -> None:
        self._tokenizer = tokenizer
        self._config = config

    def chunk(self, text: str) -> list[Chunk]:
        tokens = bounded_spans([span for span in self._tokenizer.offsets(text) if span[1] > span[0]])
        if not tokens:
            return []
        starts = [s for s, _ in tokens]
        units = list(_units(text, tokens, starts, self._config.body_tokens))
        groups = _pack(units, self._config.body_tokens)
        chunks = [
            self._make_chunk(text, tokens, ordinal, first, last)
            for ordinal, (first, last) in enumerate(groups)
        ]
        note = getattr(self._tokenizer, "note_chunks", None)
        if note is not None:
            note(text, [(c.start, c.end) for c in chunks])
        return chunks

    def _make_chunk(self, text: str, tokens: Sequence[Span], ordinal: int, first: int, last: int) -> Chunk:
        start_token = max(0, first - self._config.overlap_tokens) if ordinal else first
        start, end = tokens[start_token][0], tokens[last - 1][1]
        body = text[start:end]
        return Chunk(ordinal, start, end, body, sha256_hex(body), last - start_token)


def bounded_spans(spans: Sequence[Span], limit: int = MAX_TOKEN_CHARS) -> list[Span]:
    """``spans`` (in order) with each span, and each gap between two spans, longer than
    ``limit`` characters cut into consecutive pieces of at most ``limit``."""
    bounded: list[Span] = []
    covered = spans[0][0] if spans else 0  # text before the first token belongs to no chunk
    for start, end in spans:
        if start - covered > limit:
            bounded.extend(_pieces(covered, start, limit))
        bounded.extend(_pieces(max(start, covered), end, limit))
        covered = max(covered, end)
    return bounded


def _pieces(start: int, end: int, limit: int) -> list[Span]:
    return [(at, min(at + limit, end)) for at in range(start, end, limit)]


@dataclass(frozen=True)
class _Unit:
    """A run of whole tokens ``[first, last)`` that should not be split further."""

    first: int
    last: int
    anchor: bool

    @property
    def size(self) -> int:
        return self.last - self.first


def _token_range(starts: Sequence[int], span: Span) -> tuple[int, int]:
    return bisect.bisect_left(starts, span[0]), bisect.bisect_left(starts, span[1])


def _split(text: str, span: Span, pattern: re.Pattern[str]) -> Iterator[Span]:
    begin = span[0]
    for match in pattern.finditer(text, span[0], span[1]):
        yield begin, match.start()
        begin = match.end()
    yield begin, span[1]


def _units(text: str, tokens: Sequence[Span], starts: Sequence[int], limit: int) -> Iterator[_Unit]:
    """Paragraphs, split into sentences and then token windows only when too long."""
    for paragraph in _split(text, (0, len(text)), _PARAGRAPH_BREAK):
        first, last = _token_range(starts, paragraph)
        if last - first <= limit:
            if last > first:
                yield _Unit(first, last, _is_anchor(text, paragraph, last - first, limit))
            continue
        for sentence in _split(text, paragraph, _SENTENCE_END):
            s_first, s_last = _token_range(starts, sentence)
            for w_first in range(s_first, s_last, limit):
                w_last = min(w_first + limit, s_last)
                window = (tokens[w_first][0], tokens[w_last - 1][1])
                yield _Unit(w_first, w_last, _is_anchor(text, window, w_last - w_first, limit))


def _is_anchor(text: str, span: Span, size: int, limit: int) -> bool:
    # One unit in two, chosen by its own content (stable under edits elsewhere), ends a
    # chunk; a unit too short to stand alone (a heading, a one-liner) never does.
    if size < max(8, limit // 8):
        return False
    return hashlib.sha256(text[span[0] : span[1]].encode("utf-8")).digest()[0] & 1 == 0


def _pack(units: Sequence[_Unit], limit: int) -> list[tuple[int, int]]:
    """Group consecutive units into chunks of at most ``limit`` tokens.

    Anchor units end a segment; segments never merge, and only a segment larger than
    ``limit`` is split (greedily, within itself). So a boundary depends on the content of
    its own segment alone, and an edit re-chunks at most the segments it touches.
    """
    groups: list[tuple[int, int]] = []
    segment: list[_Unit] = []
    for unit in units:
        segment.append(unit)
        if unit.anchor:
            groups.extend(_split_segment(segment, limit))
            segment = []
    if segment:
        groups.extend(_split_segment(segment, limit))
    return groups


def _split_segment(segment: Sequence[_Unit], limit: int) -> list[tuple[int, int]]:
    groups: list[tuple[int, int]] = []
    first, last = segment[0].first, segment[0].first
    for unit in segment:
        if last > first and unit.last - first > limit:
            groups.append((first, last))
            first = unit.first
        last = unit.last
    groups.append((first, last))
    return groups
