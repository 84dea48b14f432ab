"""Training pairs for ``embedstream tune``: a query and the text that answers it.

Pairs come from the user (``--pairs FILE.jsonl``, one ``{"query", "positive"}`` object a
line, e.g. a search log or an FAQ; an optional ``"doc_id"`` names the positive's document)
or are derived from each indexed document's own structure, one pair per document, by the
first rule that gives a query of 2 to 32 words and a positive of 40 characters or more:

* ``name``: a manual page's NAME line (``ls - list directory contents`` gives ``list
  directory contents``) → the page after its NAME section;
* ``docstring``: a module docstring's first sentence → the rest of the file;
* ``heading``: the first Markdown heading (``#`` or underlined) → the section it heads, up
  to the next heading of its level or above;
* ``title``: ``metadata.title`` (a SQL row's, an HTML page's) → the text without that line;
* ``title line``: a short first line with a blank line after it → the rest of the document.

A positive never holds its query verbatim (copies are removed, case-insensitively across
line breaks), so the model learns what the words mean rather than to spot them; it is cut
at :data:`POSITIVE_CHARS` (the model reads a few hundred tokens anyway). Everything here
is pure: no store, no model.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.errors import ConfigError

POSITIVE_CHARS = 2_000
MIN_POSITIVE_CHARS = 40
MIN_QUERY_WORDS = 2
MAX_QUERY_WORDS = 32
#: Shown at most this many malformed lines of a pairs file (then a count of the rest).
MAX_PROBLEMS = 20
#: Consecutive chunks share an overlap; a shorter common run is a coincidence, not one.
MIN_OVERLAP_CHARS = 8

_NAME_SEPARATOR = re.compile(r"\s[-‐–—−]{1,2}\s")
_MAN_HEADING = re.compile(r"^[A-Z][A-Z0-9 ,/&()-]*$")
_ATX = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_SETEXT = re.compile(r"^(=+|-+)\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_DOCSTRING = re.compile(r'^(?:#[^\n]*\n|\s)*(?:[rRuU]?)("""|\'\'\')(.*?)\1', re.DOTALL)
_SENTENCE = re.compile(r"(?<=[.!?])\s|\n\s*\n")
_BLANK_RUNS = re.compile(r"\n\s*\n(\s*\n)+")


@dataclass(frozen=True)
class Document:
    """One indexed document, its text reassembled from its chunks."""

    doc_id: str
    text: str
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Pair:
    query: str
    positive: str
    doc_id: str | None = None  # the positive's document, when known (qrels, exclusions)
    rule: str = "pairs file"


@dataclass(frozen=True)
class Derived:
    pairs: list[Pair]
    by_rule: dict[str, int]
    without_structure: int  # documents no rule applies to


@dataclass(frozen=True)
class Split:
    train: list[Pair]
    held_out: list[Pair]


# -- a pairs file --------------------------------------------------------------------------


def load_pairs(path: Path) -> list[Pair]:
    """Every line of ``path`` as a pair; all malformed lines are reported at once, by number."""
    if not path.is_file():
        raise ConfigError(f"--pairs {path} does not exist")
    pairs: list[Pair] = []
    problems: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        found = _parse_pair(line)
        if isinstance(found, Pair):
            pairs.append(found)
        else:
            problems.append(f"{path}:{number}: {found}")
    if problems:
        shown = problems[:MAX_PROBLEMS]
        more = len(problems) - len(shown)
        tail = [f"... and {more} more malformed lines"] if more else []
        head = f'{path}: {len(problems)} malformed line(s); each must be {{"query": ..., "positive": ...}}'
        raise ConfigError(head, *shown, *tail)
    if not pairs:
        raise ConfigError(f'{path} holds no pairs (one JSON object a line: {{"query", "positive"}})')
    return pairs


def _parse_pair(line: str) -> Pair | str:
    """A pair, or what is wrong with the line."""
    try:
        record = json.loads(line)
    except ValueError as exc:
        return f"not JSON ({exc})"
    if not isinstance(record, dict):
        return f"expected a JSON object, found {type(record).__name__}"
    missing = [k for k in ("query", "positive") if not isinstance(record.get(k), str)]
    if missing:
        return f"{' and '.join(repr(k) for k in missing)} must be a string"
    query, positive = " ".join(record["query"].split()), record["positive"].strip()
    if not query or not positive:
        return "'query' and 'positive' must not be empty"
    doc_id = record.get("doc_id")
    if doc_id is not None and not isinstance(doc_id, str):
        return "'doc_id' must be a string when given"
    return Pair(query, cut(positive), doc_id)


# -- pairs from the documents' structure -------------------------------------------------


def derive_pairs(documents: Iterable[Document]) -> Derived:
    pairs: list[Pair] = []
    by_rule: dict[str, int] = {}
    without = 0
    for document in documents:
        pair = derive_pair(document)
        if pair is None:
            without += 1
            continue
        pairs.append(pair)
        by_rule[pair.rule] = by_rule.get(pair.rule, 0) + 1
    return Derived(pairs, by_rule, without)


def derive_pair(document: Document) -> Pair | None:
    """The document's own query and the text it heads (see the module's table), or None."""
    text = document.text
    title = document.metadata.get("title")
    found = (
        _from_name_line(text),
        _from_docstring(text),
        _from_heading(text),
        _from_title(text, title) if isinstance(title, str) else None,
        _from_title_line(text),
    )
    for rule, raw, section in (f for f in found if f is not None):
        query = " ".join(raw.split())
        positive = cut(without_copies(section, query))
        if MIN_QUERY_WORDS <= len(query.split()) <= MAX_QUERY_WORDS and len(positive) >= MIN_POSITIVE_CHARS:
            return Pair(query, positive, document.doc_id, rule)
    return None


def _from_name_line(text: str) -> tuple[str, str, str] | None:
    lines = text.splitlines()
    head = next((i for i, line in enumerate(lines[:20]) if line.strip() == "NAME"), None)
    if head is None:
        return None
    end = next(
        (i for i in range(head + 1, len(lines)) if _MAN_HEADING.match(lines[i].strip()) and lines[i].strip()),
        len(lines),
    )
    name_text = " ".join(" ".join(lines[head + 1 : end]).split())
    pieces = _NAME_SEPARATOR.split(name_text, maxsplit=1)
    if len(pieces) != 2:
        return None
    return "name", pieces[1], "\n".join(lines[end:])


def _from_heading(text: str) -> tuple[str, str, str] | None:
    lines = text.splitlines()
    in_fence = False
    for i, line in enumerate(lines):
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        level_title = None if in_fence else _heading(lines, i)
        if level_title is not None:
            level, title = level_title
            body_start = i + (2 if _is_setext(lines, i) else 1)
            end = _section_end(lines, body_start, level)
            section = "\n".join(lines[body_start:end]).strip()
            if len(section) < MIN_POSITIVE_CHARS:  # a heading over sub-headings only
                section = "\n".join(lines[body_start:]).strip()
            return "heading", title, section
    return None


def _heading(lines: Sequence[str], i: int) -> tuple[int, str] | None:
    if match := _ATX.match(lines[i]):
        return len(match.group(1)), match.group(2)
    if _is_setext(lines, i):
        return (1 if lines[i + 1].lstrip().startswith("=") else 2), lines[i].strip()
    return None


def _is_setext(lines: Sequence[str], i: int) -> bool:
    return bool(lines[i].strip()) and i + 1 < len(lines) and bool(_SETEXT.match(lines[i + 1]))


def _section_end(lines: Sequence[str], start: int, level: int) -> int:
    in_fence = False
    for j in range(start, len(lines)):
        if _FENCE.match(lines[j]):
            in_fence = not in_fence
        elif not in_fence and (found := _heading(lines, j)) is not None and found[0] <= level:
            return j
    return len(lines)


def _from_docstring(text: str) -> tuple[str, str, str] | None:
    match = _DOCSTRING.match(text)
    if match is None:
        return None
    body = match.group(2).strip()
    first = _SENTENCE.split(body, maxsplit=1)[0].strip()
    rest = (body[len(first) :] + "\n\n" + text[match.end() :]).strip()
    return "docstring", first, rest


def _from_title(text: str, title: str) -> tuple[str, str, str] | None:
    if not title.strip():
        return None
    lines = text.splitlines()
    kept = [line for line in lines if line.strip().lstrip("#").strip() != title.strip()]
    return "title", title, "\n".join(kept)


def _from_title_line(text: str) -> tuple[str, str, str] | None:
    first, sep, rest = text.partition("\n\n")
    line = first.strip()
    if (
        not sep
        or "\n" in line
        or len(line) > 80
        or line.startswith("#")
        or line.endswith((".", ",", ";", ":"))
    ):
        return None
    return "title line", line, rest


# -- text helpers -----------------------------------------------------------------------


def without_copies(text: str, query: str) -> str:
    """``text`` with verbatim copies of ``query`` removed (any case, across line breaks)."""
    words = [re.escape(w) for w in query.split()]
    if not words:
        return text.strip()
    removed = re.compile(r"\s+".join(words), re.IGNORECASE).sub("", text)
    return _BLANK_RUNS.sub("\n\n", removed).strip()


def cut(text: str, limit: int = POSITIVE_CHARS) -> str:
    """At most ``limit`` characters, ending at a paragraph or word edge when one is near."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    for edge in (head.rfind("\n\n"), head.rfind(" ")):
        if edge > limit // 2:
            return head[:edge].rstrip()
    return head


def join_chunks(texts: Sequence[str]) -> str:
    """A document's text from its chunks in order: each chunk's overlap with the previous
    one (a suffix of it that the chunk starts with) is kept once."""
    if not texts:
        return ""
    joined = texts[0]
    for text in texts[1:]:
        overlap = _overlap(joined, text)
        joined += text[overlap:] if overlap else "\n\n" + text
    return joined


def _overlap(before: str, after: str) -> int:
    longest = min(len(before), len(after))
    for size in range(longest, MIN_OVERLAP_CHARS - 1, -1):
        if before.endswith(after[:size]):
            return size
    return 0


# -- held out, digest, BEIR files --------------------------------------------------------


def split_held_out(pairs: Sequence[Pair], fraction: float, seed: int) -> Split:
    """A seeded split by document: every pair of a document (or of one positive text, when
    the document is unknown) lands on the same side. Documents are ranked by a hash of the
    seed and their id, so the split does not depend on the order they were read in, and
    ``round(fraction x documents)`` of them (at least one) are held out."""
    groups = sorted({_group(p) for p in pairs}, key=lambda g: _rank(seed, g))
    held_count = max(1, round(fraction * len(groups))) if fraction > 0 else 0
    held = set(groups[:held_count])
    return Split([p for p in pairs if _group(p) not in held], [p for p in pairs if _group(p) in held])


def _group(pair: Pair) -> str:
    return f"doc:{pair.doc_id}" if pair.doc_id is not None else f"text:{pair.positive}"


def _rank(seed: int, group: str) -> str:
    return hashlib.sha256(f"{seed}\0{group}".encode()).hexdigest()


def data_digest(rows: Iterable[Sequence[str]]) -> str:
    """sha256 of the training rows (query, positive, negatives...), in order."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(list(row), ensure_ascii=False).encode() + b"\n")
    return digest.hexdigest()[:16]


def beir_files(held_out: Sequence[Pair]) -> tuple[str, str] | None:
    """``queries.jsonl`` and ``qrels.tsv`` of the held-out pairs, for ``embedstream eval``
    and the promote gate (``index.eval_queries``/``eval_qrels``); None when a pair's
    document is unknown (a pairs file without ``doc_id``)."""
    if not held_out or any(p.doc_id is None for p in held_out):
        return None
    queries, qrels = [], ["query-id\tcorpus-id\tscore"]
    for number, pair in enumerate(held_out, start=1):
        queries.append(json.dumps({"_id": f"t{number}", "text": pair.query}, ensure_ascii=False))
        qrels.append(f"t{number}\t{pair.doc_id}\t1")
    return "\n".join(queries) + "\n", "\n".join(qrels) + "\n"
