"""The crash matrix: every crash point × every next change × every source, generated.

Each cell indexes a small corpus, then changes one document (an edit, or a new document)
and indexes again with a crash armed at one point, so the process "dies" there
(:class:`~pipeline.core.faults.SimulatedCrash`: every object of the dead process is
dropped and the state dir is opened afresh). Then the same document takes its next change
(a newer edit, a delete, emptied, an older copy restored with its old clock, unreadable,
renamed, or nothing), one normal pass runs, and the index must equal the final corpus:
the same point ids per document, each point's text, and each vector the encoding of its
chunk (tests/groundtruth.py). Real embedded Qdrant engine, real tiny model.

``make test`` runs every cell (about 5 minutes on 2 cores; ``make verify-matrix`` runs the
matrix alone); ``CRASH_MATRIX_SAMPLE=N`` runs a seeded sample of N cells instead.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest

from connectors.filesystem import FilesystemSource
from connectors.jsonl import JsonlSource
from connectors.kit.rows import RowFormat
from connectors.sql import SqlSource, SqlTable
from pipeline.config.settings import Settings
from pipeline.core import faults
from pipeline.encoding import Encoder
from pipeline.encoding.transformer import SentenceTransformerEncoder
from pipeline.runtime.adapters import make_chunker
from pipeline.runtime.embedded import EmbeddedPipeline
from pipeline.runtime.local import index_source
from pipeline.sources import Source
from pipeline.versions.spec import live_version
from tests.groundtruth import assert_index_equals, expected_chunks, paragraphs

pytestmark = pytest.mark.slow

CRASH_POINTS = (
    "source.after_reserve",
    "embed.after_encode",
    "embed.before_commit",
    "sink.after_upsert",
    "sink.after_state",
    "sink.after_delete",
    "sink.after_flush",
    "sink.before_commit",
    "source.after_publish",
    "source.sql.after_checkpoint",  # the SQL source only
    "index.create_version",  # the first pass only: the version is created once
)
#: What the crashed pass was doing: the very first index, an edit of a document, a new one.
IN_FLIGHT = ("first", "edit", "add")
NEXT = ("edit", "delete", "empty", "restore", "unreadable", "rename", "nothing")
SOURCES = ("folder", "sql", "jsonl")
#: JSON lines carry changes, not states: an empty text or a broken line is refused before it
#: is a change (the index keeps what it had), so those two cells ask nothing new of it.
NOT_A_CHANGE = {("jsonl", "empty"), ("jsonl", "unreadable")}

BASE = 1_700_000_000  # seconds: the corpus's clock, advanced by each change


class Corpus(Protocol):
    """One kind of source, driven by the test; ``truth`` is what the index must hold."""

    truth: dict[str, str]

    def write(self, doc_id: str, text: str, clock: int) -> None: ...
    def delete(self, doc_id: str) -> None: ...
    def empty(self, doc_id: str, clock: int) -> None: ...
    def unreadable(self, doc_id: str, clock: int) -> None: ...
    def rename(self, doc_id: str, new_id: str, clock: int) -> None: ...
    def source(self, state: Path) -> Source: ...


@dataclass
class Folder:
    root: Path
    truth: dict[str, str] = field(default_factory=dict)

    def write(self, doc_id: str, text: str, clock: int) -> None:
        path = self.root / doc_id
        path.write_text(text, encoding="utf-8")
        os.utime(path, (clock, clock))
        self.truth[doc_id] = text

    def delete(self, doc_id: str) -> None:
        (self.root / doc_id).unlink()
        self.truth.pop(doc_id, None)

    def empty(self, doc_id: str, clock: int) -> None:
        self.write(doc_id, "", clock)
        self.truth.pop(doc_id)

    def unreadable(self, doc_id: str, clock: int) -> None:
        path = self.root / doc_id
        path.write_bytes(b"\x00\x01\xfe binary \xff\x00" * 20)
        os.utime(path, (clock, clock))
        self.truth.pop(doc_id, None)

    def rename(self, doc_id: str, new_id: str, clock: int) -> None:
        (self.root / doc_id).rename(self.root / new_id)
        self.truth[new_id] = self.truth.pop(doc_id)

    def source(self, state: Path) -> Source:
        return FilesystemSource(self.root, state / "fs.checkpoint.json", name="fs")


@dataclass
class Table:
    db: Path
    truth: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        with sqlite3.connect(self.db) as db:
            db.execute("CREATE TABLE docs (id TEXT PRIMARY KEY, body TEXT, updated_at INTEGER NOT NULL)")

    def _run(self, sql: str, *args: object) -> None:
        with sqlite3.connect(self.db) as db:
            db.execute(sql, args)

    def write(self, doc_id: str, text: str, clock: int) -> None:
        self._run(
            "INSERT INTO docs VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE SET body = excluded.body, "
            "updated_at = excluded.updated_at",
            doc_id, text, clock,
        )  # fmt: skip
        self.truth[doc_id] = text

    def delete(self, doc_id: str) -> None:
        self._run("DELETE FROM docs WHERE id = ?", doc_id)
        self.truth.pop(doc_id, None)

    def empty(self, doc_id: str, clock: int) -> None:
        self.write(doc_id, "", clock)
        self.truth.pop(doc_id)

    def unreadable(self, doc_id: str, clock: int) -> None:
        self._run("UPDATE docs SET body = NULL, updated_at = ? WHERE id = ?", clock, doc_id)
        self.truth.pop(doc_id, None)

    def rename(self, doc_id: str, new_id: str, clock: int) -> None:
        self._run("UPDATE docs SET id = ?, updated_at = ? WHERE id = ?", new_id, clock, doc_id)
        self.truth[new_id] = self.truth.pop(doc_id)

    def source(self, state: Path) -> Source:
        # The look-back covers the whole test clock: what is asked here is crash safety, not
        # a cursor that moves backwards past it.
        table = SqlTable(
            url=f"sqlite:///{self.db}", key="id", version="updated_at", rows=RowFormat("{body}"),
            table="docs", lookback=10_000,
        )  # fmt: skip
        return SqlSource(table, state / "sql.checkpoint.sqlite", name="db")


@dataclass
class Lines:
    path: Path
    truth: dict[str, str] = field(default_factory=dict)

    def _append(self, line: str) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    def write(self, doc_id: str, text: str, clock: int) -> None:
        self._append(json.dumps({"doc_id": doc_id, "text": text}))
        self.truth[doc_id] = text

    def delete(self, doc_id: str) -> None:
        self._append(f'{{"doc_id": "{doc_id}", "op": "delete"}}')
        self.truth.pop(doc_id, None)

    def empty(self, doc_id: str, clock: int) -> None:  # refused: see NOT_A_CHANGE
        self._append(f'{{"doc_id": "{doc_id}", "text": ""}}')

    def unreadable(self, doc_id: str, clock: int) -> None:  # refused: see NOT_A_CHANGE
        self._append(f'{{"doc_id": "{doc_id}", "text": ')

    def rename(self, doc_id: str, new_id: str, clock: int) -> None:
        text = self.truth[doc_id]
        self.delete(doc_id)
        self.write(new_id, text, clock)

    def source(self, state: Path) -> Source:
        return JsonlSource(self.path, state / "jsonl.checkpoint.sqlite", name="lines")


def make_corpus(kind: str, where: Path) -> Corpus:
    if kind == "folder":
        (where / "docs").mkdir()
        return Folder(where / "docs")
    if kind == "sql":
        return Table(where / "db.sqlite")
    return Lines(where / "changes.jsonl")


@dataclass(frozen=True)
class Cell:
    source: str
    crash_at: str
    in_flight: str
    next: str

    @property
    def id(self) -> str:
        return f"{self.source}-{self.crash_at}-{self.in_flight}-then-{self.next}"


def reachable(source: str, point: str, flight: str) -> bool:
    if point == "source.sql.after_checkpoint":
        return source == "sql"
    return point != "index.create_version" or flight == "first"


def every_cell() -> list[Cell]:
    return [
        Cell(source, point, flight, then)
        for source in SOURCES
        for point in CRASH_POINTS
        for flight in IN_FLIGHT
        for then in NEXT
        if (source, then) not in NOT_A_CHANGE and reachable(source, point, flight)
    ]


def chosen_cells() -> list[Cell]:
    cells = every_cell()
    sample = os.environ.get("CRASH_MATRIX_SAMPLE", "all")
    if sample == "all":
        return cells
    return sorted(random.Random(17).sample(cells, min(int(sample), len(cells))), key=lambda c: c.id)


@pytest.fixture(scope="module")
def encoder(tiny_model: Path) -> Encoder:
    return SentenceTransformerEncoder(matrix_settings(Path("/nonexistent"), tiny_model).model)


def matrix_settings(state: Path, model: Path) -> Settings:
    return Settings.load(
        state_dir=state, model={"name": str(model)}, chunking={"max_tokens": 64, "overlap_tokens": 8}
    )


def one_pass(settings: Settings, encoder: Encoder, corpus: Corpus, crash_at: str | None = None) -> bool:
    """A process's life: open, index once, close. True when it died at ``crash_at``."""
    source = corpus.source(settings.state_dir)
    pipeline = EmbeddedPipeline(settings, encoder=encoder)
    if crash_at is not None:
        faults.arm(crash_at, kill=False)
    try:
        index_source(pipeline, source)
    except faults.SimulatedCrash:
        return True
    finally:
        faults.disarm()
        pipeline.close()
        getattr(source, "close", lambda: None)()
    return False


def apply_next(corpus: Corpus, doc_id: str, change: str, before: str, clocks: Iterator[int]) -> None:
    if change == "edit":
        corpus.write(doc_id, paragraphs("a later edit", 5), next(clocks))
    elif change == "delete":
        corpus.delete(doc_id)
    elif change == "empty":
        corpus.empty(doc_id, next(clocks))
    elif change == "restore":  # an older copy, with its older clock (cp -p, a backup)
        corpus.write(doc_id, before, BASE - 100)
    elif change == "unreadable":
        corpus.unreadable(doc_id, next(clocks))
    elif change == "rename":
        corpus.rename(doc_id, "renamed.md", next(clocks))


@pytest.mark.parametrize("cell", chosen_cells(), ids=lambda c: c.id)
def test_the_index_equals_the_corpus_after_a_crash_and_any_next_change(
    cell: Cell, tmp_path: Path, tiny_model: Path, encoder: Encoder
):
    """Crash at any point with a change in flight, change that document in any way, run
    once: the index holds exactly the corpus (ids, texts, vectors)."""
    settings = matrix_settings(tmp_path / "state", tiny_model)
    corpus = make_corpus(cell.source, tmp_path)
    clocks = iter(range(BASE, BASE + 1000))
    for name, topic in (("a.md", "apples"), ("b.md", "boats"), ("c.md", "clouds")):
        corpus.write(name, paragraphs(topic, 4), next(clocks))
    target, before = "a.md", paragraphs("an older note", 2)
    if cell.in_flight != "first":
        assert not one_pass(settings, encoder, corpus)
        target = "a.md" if cell.in_flight == "edit" else "n.md"
        before = corpus.truth.get(target, before)
        corpus.write(target, paragraphs("the change in flight", 6), next(clocks))
    assert one_pass(settings, encoder, corpus, crash_at=cell.crash_at), f"{cell.crash_at} was never reached"

    apply_next(corpus, target, cell.next, before, clocks)
    assert not one_pass(settings, encoder, corpus)
    assert_equals_corpus(settings, encoder, corpus, cell.source)


def assert_equals_corpus(settings: Settings, encoder: Encoder, corpus: Corpus, kind: str) -> None:
    name = {"folder": "fs", "sql": "db", "jsonl": "lines"}[kind]
    pipeline = EmbeddedPipeline(settings, encoder=encoder)
    try:
        version = live_version(pipeline.store, settings.index.name)
        assert version is not None
        expected = expected_chunks(corpus.truth, make_chunker(encoder, settings), source=name)
        assert_index_equals(pipeline.store, version, expected, encoder)
    finally:
        pipeline.close()


def test_the_matrix_covers_every_crash_point_the_pipeline_has():
    """A crash point added to the code without a row here fails: the matrix stays complete."""
    repo = Path(__file__).resolve().parents[2]
    named: set[str] = set()
    for path in [*repo.joinpath("pipeline").rglob("*.py"), *repo.joinpath("connectors").rglob("*.py")]:
        text = path.read_text(encoding="utf-8")
        for part in text.split('crash_point("')[1:]:
            named.add(part.split('"', 1)[0])
    assert named <= set(CRASH_POINTS)
