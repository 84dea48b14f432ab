"""A deterministic benchmark corpus: unique documents built from the sample corpus' sentences.

Sentences are reshuffled per document with a seeded RNG so no two chunks are identical
(the dedup cache must not flatter the pipeline), while the language stays realistic.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "corpus"


def sentences() -> list[str]:
    found: list[str] = []
    for path in sorted(SAMPLE.rglob("*")):
        if path.suffix in {".md", ".txt", ".rst"}:
            text = re.sub(r"[#=*`_-]{2,}", " ", path.read_text())
            found += [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) >= 6]
    return found


def write_corpus(root: Path, documents: int, paragraphs: int = 6, seed: int = 7) -> list[Path]:
    pool = sentences()
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(documents):
        body = [f"# Benchmark document {number}"]
        for paragraph in range(paragraphs):
            picked = rng.sample(pool, rng.randint(3, 5))
            body.append(f"Section {paragraph} of document {number}. " + " ".join(picked))
        path = root / f"doc-{number:05d}.md"
        path.write_text("\n\n".join(body) + "\n")
        paths.append(path)
    return paths


def edit(path: Path, marker: str) -> None:
    """Change one paragraph near the middle: a realistic small edit."""
    parts = path.read_text().split("\n\n")
    middle = len(parts) // 2
    parts[middle] = parts[middle] + f" Edited: {marker}."
    path.write_text("\n\n".join(parts))
