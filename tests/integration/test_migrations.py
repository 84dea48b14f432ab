"""Model migrations in the embedded mode: a new version is built beside the live one, follows
every edit, is gated, swapped in atomically and rolled back; real engine, real (tiny) models.

Exactness is checked against ground truth with vectors (tests/groundtruth.py), each version
with its own model and chunker.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from connectors.filesystem import FilesystemSource
from pipeline.bus.kafka import KafkaBus, KafkaTimeouts
from pipeline.config.settings import KafkaSettings, Settings
from pipeline.core.errors import Refused
from pipeline.core.hashing import normalize_text
from pipeline.runtime.admin import (
    Admin,
    StorageChoice,
    promote_version,
    rollback_version,
    start,
    states,
)
from pipeline.runtime.backfill import backfill_source
from pipeline.runtime.embedded import EmbeddedPipeline
from pipeline.runtime.local import index_source
from pipeline.sources import SourceBindings
from pipeline.store import VectorStore
from pipeline.versions.spec import IndexVersion, find_version, live_version
from tests.groundtruth import assert_index_equals, expected_chunks, text_files

STABLE = [f"stable-{i}.md" for i in range(6)]  # never edited: every complete answer holds them
TOPICS = ["harbours", "glaciers", "orchards", "lighthouses", "deserts", "bridges", "volcanoes", "rivers"]


def paragraphs(topic: str, count: int, salt: str = "") -> str:
    return "\n\n".join(
        f"Paragraph {i} about {topic}{salt}. It explains detail {i} of {topic} in plain words, so the "
        f"chunker has real text to count. Item {i * 7} closes it."
        for i in range(count)
    )


def write(root: Path, relpath: str, text: str) -> None:
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    # A later mtime than any earlier write: the source sees every edit as a new version.
    stamp = time.time_ns() + 10**9
    os.utime(path, ns=(stamp, stamp))


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    for i, name in enumerate(STABLE):
        write(root, name, f"# {TOPICS[i]}\n\n" + paragraphs(TOPICS[i], 3))
    for i in range(4):
        write(root, f"edits/e{i}.md", f"# Edit {i}\n\n" + paragraphs(TOPICS[6 + i % 2], 2, f" take {i}"))
    return root


@pytest.fixture
def eval_files(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "queries.jsonl", tmp_path / "qrels.tsv"


@pytest.fixture
def settings(tmp_path: Path, tiny_model: Path, eval_files: tuple[Path, Path]) -> Settings:
    queries, qrels = eval_files
    return Settings.load(
        state_dir=tmp_path / "state",
        model={"name": str(tiny_model)},
        chunking={"max_tokens": 64, "overlap_tokens": 8},
        index={"quantization": "none", "eval_queries": str(queries), "eval_qrels": str(qrels)},
    )


class Index:
    """One embedded pipeline over ``docs``: index passes (with backfill) and migration steps."""

    def __init__(self, settings: Settings, docs: Path) -> None:
        self.settings = settings
        self.docs = docs
        self.pipe = EmbeddedPipeline(settings)
        # The pipeline owns the store: migration steps run on it, under its lock.
        self.admin = Admin(settings, self.pipe.runtime)

    @property
    def store(self) -> VectorStore:
        return self.pipe.store

    def source(self, home: Path) -> FilesystemSource:
        source = FilesystemSource(self.docs, home / "checkpoints" / "fs.json", name="fs")
        SourceBindings.of(home).bind("fs", source.identity)
        return source

    def run(self) -> None:
        """What `embedstream index DOCS` does: a pass into every version, then the backfills."""
        index_source(self.pipe, self.source(self.settings.state_dir / "indexes" / "docs"))
        backfill_source(self.pipe, "fs", self.source)

    def start(self, choice: StorageChoice) -> IndexVersion:
        with self.pipe.locked():
            spec = start(self.admin, choice)
        self.pipe.refresh_versions()
        return spec

    def promote(self, *, force: bool = False) -> None:
        with self.pipe.locked():
            promote_version(self.admin, None, force=force)

    def rollback(self) -> None:
        with self.pipe.locked():
            rollback_version(self.admin, None)

    def version(self, number: int) -> IndexVersion:
        found = find_version(self.store, "docs", number)
        assert found is not None
        return found

    def assert_exact(self, number: int) -> None:
        """Version ``number`` holds exactly the folder, as its own model and chunker make it."""
        version = self.version(number)
        encoders = self.pipe.runtime.encoders
        expected = expected_chunks(text_files(self.docs), encoders.chunker_for(version), source="fs")
        assert_index_equals(self.store, version, expected, encoders.for_version(version))

    def close(self) -> None:
        self.pipe.close()


@pytest.fixture
def index(settings: Settings, docs: Path) -> Iterator[Index]:
    handle = Index(settings, docs)
    yield handle
    handle.close()


def exact_chunk_queries(index: Index, eval_files: tuple[Path, Path]) -> None:
    """Each stable document's first chunk as a query judging that document relevant: any model
    ranks an identical text first, so every complete version scores nDCG@10 = 1."""
    chunker = index.pipe.runtime.encoders.chunker_for(index.version(1))
    queries, qrels = eval_files
    lines, judgments = [], ["query-id\tcorpus-id\tscore"]
    for n, name in enumerate(STABLE):
        first = chunker.chunk(normalize_text((index.docs / name).read_text()))[0].text
        lines.append(json.dumps({"_id": f"q{n}", "text": first}))
        judgments.append(f"q{n}\t{name}\t1")
    queries.write_text("\n".join(lines) + "\n")
    qrels.write_text("\n".join(judgments) + "\n")


@contextlib.contextmanager
def recorded_writes(store: VectorStore) -> Iterator[list[tuple[str, str]]]:
    """The store's writing calls made inside the block, as (method, collection or alias), in
    order; the real store still does the work."""
    calls: list[tuple[str, str]] = []

    def recording(name: str) -> Callable[..., Any]:
        method = getattr(store, name)

        def call(target: str, *args: Any, **kwargs: Any) -> Any:
            calls.append((name, target))
            return method(target, *args, **kwargs)

        return call

    writers = (
        "create_collection",
        "drop_collection",
        "upsert",
        "set_payload",
        "delete",
        "sweep",
        "set_alias",
    )
    with pytest.MonkeyPatch.context() as patch:
        for name in writers:
            patch.setattr(store, name, recording(name))
        yield calls


class Searcher(threading.Thread):
    """Searches through the alias without pause; records every answer missing a stable document."""

    def __init__(self, pipe: EmbeddedPipeline) -> None:
        super().__init__(daemon=True)
        self.pipe = pipe
        self.stop = threading.Event()
        self.answers = 0
        self.partial: list[set[str]] = []

    def run(self) -> None:
        while not self.stop.is_set():
            found = {r.doc_id for r in self.pipe.search("paragraph about plain words", k=50)}
            self.answers += 1
            if not set(STABLE) <= found:
                self.partial.append(found)


def test_a_migration_to_another_model_under_live_edits_is_promoted_and_rolled_back(
    index, docs, eval_files, other_tiny_model
):
    """Model A to model B while edits keep arriving: every search, before, during and after the
    swap, is answered by a complete version; after promote B is exactly the folder (vectors
    included), and a rollback returns to A, which followed every edit too."""
    index.run()
    exact_chunk_queries(index, eval_files)
    searcher = Searcher(index.pipe)
    searcher.start()
    try:
        spec = index.start(StorageChoice(model=str(other_tiny_model)))
        assert (spec.version, spec.vectors_from) == (2, 0)
        write(docs, "edits/e0.md", "# Edit 0\n\n" + paragraphs("canals", 4, " rewritten"))
        (docs / "edits/e1.md").unlink()
        index_source(index.pipe, index.source(index.settings.state_dir / "indexes" / "docs"))
        with pytest.raises(Refused, match="not been backfilled from source"):
            index.promote()  # B holds only what was edited since it started
        assert live_version(index.store, "docs").version == 1

        backfill_source(index.pipe, "fs", index.source)
        write(docs, "edits/e4.md", "# Edit 4\n\n" + paragraphs("meadows", 2))
        write(docs, "edits/e2.md", "# Edit 2\n\nShorter now.")
        index.run()
        candidate = next(s for s in states(index.admin, evaluate=True) if s.version.version == 2)
        assert (candidate.lag, candidate.pending, candidate.documents) == (0, (), 10)
        assert candidate.evaluation is not None
        assert candidate.evaluation.ndcg_at_10 == 1.0

        index.promote()
        assert live_version(index.store, "docs").version == 2
        write(docs, "edits/e3.md", "# Edit 3\n\n" + paragraphs("tundra", 3))
        index.run()
        index.assert_exact(2)

        with recorded_writes(index.store) as writes:
            index.rollback()
        # Instant: one alias swap and the two versions' lifecycle records; no point rewritten.
        assert [target for call, target in writes if call == "set_alias"] == ["docs"]
        records = {index.version(n).docs_collection for n in (1, 2)}
        assert {target for call, target in writes if call != "set_alias"} <= records
        assert live_version(index.store, "docs").version == 1
        index.assert_exact(1)
    finally:
        searcher.stop.set()
        searcher.join(timeout=30)
    assert searcher.answers > 0
    assert searcher.partial == []


def test_after_promote_searches_use_the_new_versions_model(index, eval_files, other_tiny_model):
    """The query is encoded by the live version's own model: a promote applies to the next
    search without any settings change, and a rollback likewise."""
    index.run()
    exact_chunk_queries(index, eval_files)
    index.start(StorageChoice(model=str(other_tiny_model)))
    index.run()
    query = (index.docs / STABLE[2]).read_text().split("\n\n")[1]
    index.promote()
    assert index.pipe.search(query, k=1)[0].doc_id == STABLE[2]
    index.rollback()
    assert index.pipe.search(query, k=1)[0].doc_id == STABLE[2]


def test_a_migration_that_evaluates_worse_than_the_margin_is_refused(index, eval_files, other_tiny_model):
    """Qrels made from model A's own first answers score A perfectly; model B, ranking otherwise,
    falls below the 1% margin: promote refuses, saying by how much, and --force overrides it."""
    index.run()
    queries, qrels = eval_files
    lines, judgments = [], ["query-id\tcorpus-id\tscore"]
    for n, topic in enumerate(TOPICS):
        text = f"what is said of {topic} and the details of {TOPICS[(n + 3) % len(TOPICS)]}"
        best = index.pipe.search(text, k=1)[0].doc_id
        lines.append(json.dumps({"_id": f"q{n}", "text": text}))
        judgments.append(f"q{n}\t{best}\t1")
    queries.write_text("\n".join(lines) + "\n")
    qrels.write_text("\n".join(judgments) + "\n")
    index.start(StorageChoice(model=str(other_tiny_model)))
    index.run()
    with pytest.raises(Refused, match=r"scores nDCG@10 0\.\d+ against 1\.0000 .* over the margin of 1\.0%"):
        index.promote()
    assert live_version(index.store, "docs").version == 1
    index.promote(force=True)
    assert live_version(index.store, "docs").version == 2


def test_a_same_model_rebuild_with_another_storage_encodes_nothing(index, eval_files):
    """A uint8 version of the live model is filled from the embedding cache: 0 chunks encoded,
    exact (codes of the very vectors), and it answers searches by cosine."""
    index.run()
    exact_chunk_queries(index, eval_files)
    spec = index.start(StorageChoice(datatype="uint8"))
    assert (spec.vectors_from, spec.datatype) == (1, "uint8")
    index.run()
    assert index.pipe.version_stats(2).encoded == 0
    assert index.pipe.version_stats(2).reused > 0
    index.assert_exact(2)
    index.promote()
    query = (index.docs / STABLE[4]).read_text().split("\n\n")[1]
    best = index.pipe.search(query, k=3)
    assert best[0].doc_id == STABLE[4]
    assert 0.99 < best[0].score <= 1.0001  # a cosine, not a distance between codes


def test_a_rollback_needs_no_broker(index, eval_files, other_tiny_model):
    """Rollback reads no consumer lag: with Kafka configured but unreachable (the outage a
    rollback is often for), it still swaps the alias back."""
    index.run()
    exact_chunk_queries(index, eval_files)
    index.start(StorageChoice(model=str(other_tiny_model)))
    index.run()
    index.promote()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])  # closed again on exit: nothing listens there
    timeouts = KafkaTimeouts(request_ms=2_000, bootstrap_ms=2_000, delivery_ms=4_000)
    unreachable = KafkaBus(KafkaSettings(bootstrap=f"127.0.0.1:{port}"), timeouts=timeouts)
    with index.pipe.locked():
        rollback_version(Admin(index.settings, index.pipe.runtime, unreachable), None)
    assert live_version(index.store, "docs").version == 1
