"""A retrieval corpus with relevance judgments, built from the installed Debian manual pages.

Each sampled page is rendered to plain text with man-db (``man --nh --nj -l -P cat``, no
hyphenation or justification, ``MANWIDTH`` columns, C.UTF-8 locale). Its one-line NAME
description ("ls - list directory contents" gives "list directory contents") becomes the
query, and the page becomes its one relevant document (qrels score 1).

So that a query is never a verbatim copy of its document, the document body has:

* the NAME section removed (heading and text), and the running header and footer lines;
* every other verbatim occurrence of the description removed (case-insensitive, across
  line breaks), e.g. a DESCRIPTION that opens by repeating it.

Wrapped lines are joined into one line per paragraph and the body is cut at ``max_chars``
(at a paragraph edge) to keep encoding time modest; the head of a page (SYNOPSIS,
DESCRIPTION) is what a user's question is about.

Sampling is deterministic given the seed and the installed pages: candidates are all regular
``.gz`` pages of sections 1-8 in name order, shuffled with ``random.Random(seed)``, at most
``per_family`` pages per family (the name up to the first ``_``, ``-`` or ``.``, so the
16,000 ``gcloud_*`` pages or ``git-*`` cannot swamp the set), skipping ``.so`` alias stubs,
pages without a parsable NAME line, descriptions under three words, and descriptions already
taken (one relevant document per query). The first ``pages`` that pass are kept.

Output (BEIR layout): ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl``
(``_id``, ``text``), ``qrels/test.tsv``, and ``manifest.json`` with the parameters, which
:func:`ensure_corpus` compares to decide whether an existing folder can be reused.

    .venv/bin/python ops/bench/manpages.py OUT_DIR --pages 600 --seed 7
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import subprocess
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

MAN_ROOT = Path("/usr/share/man")
SECTIONS = tuple(f"man{n}" for n in range(1, 9))
_FAMILY = re.compile(r"[_.-]")
_NAME_SEPARATOR = re.compile(r"\s[-‐–—−]{1,2}\s")
_HEADING = re.compile(r"^\S")


@dataclass(frozen=True)
class Params:
    pages: int = 600
    seed: int = 7
    per_family: int = 5
    max_chars: int = 12_000
    width: int = 100
    man_root: str = str(MAN_ROOT)


@dataclass(frozen=True)
class ManPage:
    doc_id: str
    title: str
    description: str
    body: str


def candidates(params: Params) -> list[Path]:
    """Regular page files in a seeded order, at most ``per_family`` per family."""
    root = Path(params.man_root)
    found = sorted(
        p for section in SECTIONS for p in (root / section).glob("*.gz") if p.is_file() and not p.is_symlink()
    )
    random.Random(params.seed).shuffle(found)
    taken: Counter[str] = Counter()
    kept = []
    for path in found:
        family = _FAMILY.split(path.name, maxsplit=1)[0]
        if taken[family] < params.per_family:
            taken[family] += 1
            kept.append(path)
    return kept


def is_alias_stub(path: Path) -> bool:
    """A ``.so other/page`` file only points at another page."""
    with gzip.open(path, "rt", errors="replace") as handle:
        return handle.read(200).lstrip().startswith(".so ")


def render(path: Path, width: int) -> str:
    env = {**os.environ, "MANWIDTH": str(width), "LC_ALL": "C.UTF-8", "MAN_KEEP_FORMATTING": ""}
    command = ["man", "--nh", "--nj", "-l", "-P", "cat", str(path)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)
    return done.stdout if done.returncode == 0 else ""


def sections(rendered: str) -> list[tuple[str, list[str]]]:
    """(heading, lines) pairs; the running header (first line) and footer (last) are dropped."""
    lines = [line.rstrip() for line in rendered.strip().splitlines()]
    found: list[tuple[str, list[str]]] = []
    for line in lines[1:-1]:
        if _HEADING.match(line):
            found.append((line.strip(), []))
        elif found:
            found[-1][1].append(line.strip())
    return found


def parse(path: Path, rendered: str, max_chars: int) -> ManPage | None:
    parts = sections(rendered)
    name_text = " ".join(" ".join(lines) for heading, lines in parts if heading == "NAME").split()
    pieces = _NAME_SEPARATOR.split(" ".join(name_text), maxsplit=1)
    if len(pieces) != 2:
        return None
    description = pieces[1].strip()
    body = clean_body([(h, lines) for h, lines in parts if h != "NAME"], description, max_chars)
    doc_id = path.name.removesuffix(".gz")
    stem, _, section = doc_id.rpartition(".")
    return ManPage(doc_id, f"{stem}({section})", description, body)


def clean_body(parts: Sequence[tuple[str, list[str]]], description: str, max_chars: int) -> str:
    """Paragraphs joined into single lines, the description's verbatim copies removed, cut."""
    paragraphs: list[str] = []
    for heading, lines in parts:
        paragraphs.append(heading)
        paragraphs += [" ".join(p.split()) for p in "\n".join(lines).split("\n\n") if p.strip()]
    words = [re.escape(w) for w in description.split()]
    verbatim = re.compile(r"\s+".join(words), re.IGNORECASE)
    text = verbatim.sub("", "\n\n".join(paragraphs))
    return cut(text, max_chars)


def cut(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    edge = head.rfind("\n\n")
    return head[:edge] if edge > max_chars // 2 else head


def sample(params: Params) -> list[ManPage]:
    """The first ``pages`` candidates that render into a usable page with a new description."""
    kept: list[ManPage] = []
    seen: set[str] = set()
    for page in rendered_pages(candidates(params), params):
        key = " ".join(page.description.lower().split())
        if len(key.split()) < 3 or key in seen or len(page.body) < 200:
            continue
        seen.add(key)
        kept.append(page)
        if len(kept) == params.pages:
            break
    return kept


def rendered_pages(paths: Sequence[Path], params: Params, batch: int = 32) -> Iterator[ManPage]:
    """Parsed pages in candidate order; two renders at a time (the bench machine has 2 cores)."""

    def one(path: Path) -> ManPage | None:
        return None if is_alias_stub(path) else parse(path, render(path, params.width), params.max_chars)

    with ThreadPoolExecutor(max_workers=2) as pool:
        for start in range(0, len(paths), batch):
            yield from (p for p in pool.map(one, paths[start : start + batch]) if p is not None)


def write_beir(out: Path, pages: Sequence[ManPage], params: Params) -> None:
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    with (out / "corpus.jsonl").open("w") as corpus, (out / "queries.jsonl").open("w") as queries:
        for page in pages:
            corpus.write(json.dumps({"_id": page.doc_id, "title": page.title, "text": page.body}) + "\n")
            queries.write(json.dumps({"_id": f"q:{page.doc_id}", "text": page.description}) + "\n")
    rows = ["query-id\tcorpus-id\tscore", *(f"q:{p.doc_id}\t{p.doc_id}\t1" for p in pages)]
    (out / "qrels" / "test.tsv").write_text("\n".join(rows) + "\n")
    (out / "manifest.json").write_text(json.dumps(asdict(params), indent=2) + "\n")


def ensure_corpus(out: Path, params: Params) -> Path:
    """Build the corpus into ``out`` unless it already holds one built with ``params``."""
    manifest = out / "manifest.json"
    if not manifest.is_file() or json.loads(manifest.read_text()) != asdict(params):
        pages = sample(params)
        if len(pages) < params.pages:
            print(f"only {len(pages)} usable manual pages under {params.man_root} (asked for {params.pages})")
        write_beir(out, pages, params)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="folder for corpus.jsonl, queries.jsonl, qrels/test.tsv")
    defaults = Params()
    parser.add_argument("--pages", type=int, default=defaults.pages)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--per-family", type=int, default=defaults.per_family)
    parser.add_argument("--max-chars", type=int, default=defaults.max_chars)
    args = parser.parse_args(argv)
    params = Params(args.pages, args.seed, args.per_family, args.max_chars)
    ensure_corpus(args.out, params)
    count = sum(1 for _ in (args.out / "corpus.jsonl").open())
    print(f"{count} manual pages -> {args.out} (corpus.jsonl, queries.jsonl, qrels/test.tsv)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
