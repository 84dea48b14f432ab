"""The chunker's token ids as a model's inputs: a whole document tokenized once, sliced per
chunk with the tokenizer's special tokens around it, where slicing is exact."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

import numpy as np

#: Checked once per tokenizer: whole-document token slices equal a chunk's own tokenization.
SLICE_PROBE = (
    "Kafka consumer-groups rebalance partitions (when a member joins); the café's naïve 東京 "
    "internationalization, e.g. x86_64 or v1.2.3!  It ends\n\nhere: [UNKNOWN] tokens-and-more."
)


class TokenIds:
    """One text's model inputs, shaped like a tokenizer ``Encoding`` for :func:`pad_features`."""

    __slots__ = ("attention_mask", "ids", "type_ids")

    def __init__(self, ids: np.ndarray, type_id: int) -> None:
        self.ids = ids
        self.attention_mask = np.ones(len(ids), dtype=np.int64)
        self.type_ids = np.full(len(ids), type_id, dtype=np.int64)

    @classmethod
    def of(cls, body: np.ndarray, head: Sequence[int], tail: Sequence[int], type_id: int) -> TokenIds:
        return cls(np.concatenate([np.asarray(head, np.int64), body, np.asarray(tail, np.int64)]), type_id)


def token_slice(
    starts: Sequence[int], ends: Sequence[int], words: Sequence[int | None], start: int, end: int
) -> tuple[int, int] | None:
    """Tokens ``[i, j)`` covering exactly the characters ``[start, end)``, when both edges
    are token edges between two pre-tokenized words (or the text's ends); None otherwise."""
    first = bisect.bisect_left(starts, start)
    last = bisect.bisect_left(starts, end)
    if first >= last or starts[first] != start or ends[last - 1] != end:
        return None
    if (first and words[first - 1] == words[first]) or (last < len(words) and words[last] == words[last - 1]):
        return None  # inside a word: its pieces alone tokenize differently (##ization)
    return first, last


def special_template(tokenizer: Any) -> tuple[list[int], list[int], int] | None:
    """(ids before, ids after, type id) the tokenizer's post-processor adds around one text,
    when it adds only that (a constant frame, every position attended); else None."""
    raw = tokenizer.encode(SLICE_PROBE, add_special_tokens=False)
    full = tokenizer.encode(SLICE_PROBE, add_special_tokens=True)
    body, ids = list(raw.ids), list(full.ids)
    for at in range(len(ids) - len(body) + 1):
        if ids[at : at + len(body)] == body:
            head, tail = ids[:at], ids[at + len(body) :]
            break
    else:
        return None
    if len(set(full.type_ids)) != 1 or set(full.attention_mask) != {1}:
        return None
    short = tokenizer.encode("a", add_special_tokens=True).ids
    if list(short[: len(head)]) != head or list(short[len(short) - len(tail) :]) != tail:
        return None
    return head, tail, int(full.type_ids[0])


def slices_are_exact(tokenizer: Any) -> bool:
    """Whether, for this tokenizer, a slice of a text's ids cut between pre-tokenized words
    equals the ids of that part of the text tokenized alone (true of BERT's WordPiece; not
    of byte-level BPE, which folds a word's leading space into its first token)."""
    encoding = tokenizer.encode(SLICE_PROBE, add_special_tokens=False)
    starts = [s for s, _ in encoding.offsets]
    ends = [e for _, e in encoding.offsets]
    spans = [(starts[i], ends[j]) for i in range(len(starts)) for j in range(i, min(i + 6, len(ends)))]
    ids = list(encoding.ids)
    checked = 0
    for start, end in spans:
        found = token_slice(starts, ends, encoding.word_ids, start, end)
        if found is None:
            continue
        alone = tokenizer.encode(SLICE_PROBE[start:end], add_special_tokens=False).ids
        if ids[found[0] : found[1]] != list(alone):
            return False
        checked += 1
    return checked > 0
