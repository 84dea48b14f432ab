"""The SQL connector keeps the index exactly equal to a table's rows, on SQLite and PostgreSQL.

Every test runs on both databases (a real SQLite file; a throwaway PostgreSQL cluster,
:mod:`tests.postgres_fixtures`), through the real embedded pipeline (embedded Qdrant engine,
tiny real model), and compares the index with ground truth computed from the table's rows:
point ids, chunk texts and vectors (:mod:`tests.groundtruth`).
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from connectors.kit.keystates import KeyStates
from connectors.kit.rows import RowFormat
from connectors.sql import SNAPSHOT_AFTER, SNAPSHOT_DONE, SqlSource, SqlTable, decode_value
from pipeline.config.settings import Settings
from pipeline.runtime.adapters import make_chunker
from pipeline.runtime.embedded import EmbeddedPipeline
from pipeline.runtime.local import IndexSummary, index_source
from pipeline.sources import PassReport
from pipeline.versions.spec import live_version
from tests.conftest import REPO
from tests.groundtruth import assert_index_equals, expected_chunks
from tests.postgres_fixtures import postgres_server, postgres_url  # noqa: F401 -- fixtures

T0 = dt.datetime(2024, 5, 1, 12, 0, 0)
ROWS = RowFormat("{title}\n\n{body}", ("author",), "deleted")
NAME = "articles"


def body(topic: str, paragraphs: int = 3) -> str:
    return "\n\n".join(
        f"Paragraph {i} about {topic}. It explains detail {i} of {topic} in plain words, so the "
        f"chunker has real text to count. Item {i * 7} closes it."
        for i in range(paragraphs)
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'source.db'}"
    return str(request.getfixturevalue("postgres_url"))


class Table:
    """The source table, written the way an application writes it."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url)
        self.table = sa.Table(
            NAME, sa.MetaData(),
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("title", sa.Text), sa.Column("body", sa.Text), sa.Column("author", sa.Text),
            sa.Column("updated_at", sa.DateTime), sa.Column("deleted", sa.Boolean, default=False),
        )  # fmt: skip
        self.table.metadata.create_all(self.engine)
        self.clock = T0

    def tick(self) -> dt.datetime:
        self.clock += dt.timedelta(seconds=1)
        return self.clock

    def insert(self, id_: int, title: str, text: str, at: dt.datetime | None = None) -> None:
        row = {"id": id_, "title": title, "body": text, "author": "ann", "updated_at": at or self.tick()}
        with self.engine.begin() as connection:
            connection.execute(self.table.insert(), [{**row, "deleted": False}])

    def update(self, id_: int, **values: Any) -> None:
        values.setdefault("updated_at", self.tick())
        with self.engine.begin() as connection:
            connection.execute(self.table.update().where(self.table.c.id == id_).values(**values))

    def delete(self, id_: int) -> None:
        with self.engine.begin() as connection:
            connection.execute(self.table.delete().where(self.table.c.id == id_))

    def documents(self) -> dict[str, str]:
        """doc_id -> text of the rows that are not soft-deleted: what the index must hold."""
        with self.engine.connect() as connection:
            rows = connection.execute(sa.select(self.table)).mappings().all()
        return {str(r["id"]): ROWS.text(r) for r in rows if not r["deleted"]}


@pytest.fixture
def table(db_url: str) -> Iterator[Table]:
    handle = Table(db_url)
    yield handle
    handle.engine.dispose()


@pytest.fixture
def settings(tiny_settings: Settings) -> Settings:
    return tiny_settings


class Indexer:
    """One embedded index, fed by the table through the SQL connector (reopened per pass)."""

    def __init__(self, settings: Settings, url: str) -> None:
        self.settings = settings
        self.url = url
        self.pipe = EmbeddedPipeline(settings)

    def run(self, **config: Any) -> IndexSummary:
        options = {"key": "id", "version": "updated_at", "rows": ROWS, "table": NAME, **config}
        source = SqlSource(SqlTable(url=self.url, **options), _checkpoint(self.settings), name=NAME)
        try:
            return index_source(self.pipe, source)
        finally:
            source.close()

    def assert_exact(self, table: Table) -> None:
        version = live_version(self.pipe.store, "docs")
        assert version is not None
        chunker = make_chunker(self.pipe.encoder, self.settings)
        expected = expected_chunks(table.documents(), chunker, source=NAME)
        assert_index_equals(self.pipe.store, version, expected, self.pipe.encoder)

    def payloads(self, doc_id: str) -> list[dict[str, Any]]:
        version = live_version(self.pipe.store, "docs")
        assert version is not None
        return [p for _, p in self.pipe.store.scroll(version.collection) if p["doc_id"] == doc_id]


@pytest.fixture
def indexer(settings: Settings, db_url: str) -> Iterator[Indexer]:
    handle = Indexer(settings, db_url)
    yield handle
    handle.pipe.close()


def fill(table: Table, count: int) -> None:
    for i in range(1, count + 1):
        table.insert(i, f"Article {i}", body(f"topic {i}"))


def test_inserts_and_text_updates_end_exact(table, indexer):
    """A snapshot, then an insert and an edit of text: the index equals the table each time."""
    fill(table, 5)
    assert indexer.run().added == 5
    indexer.assert_exact(table)
    table.insert(6, "Article 6", body("a new topic"))
    table.update(2, body=body("a rewritten topic"))
    summary = indexer.run()
    assert (summary.added, summary.changed) == (1, 1)
    indexer.assert_exact(table)
    assert indexer.run().changed_anything is False


def test_metadata_only_update_writes_the_payload_only(table, indexer):
    """An author change re-writes the payload: 0 chunks encoded, 0 vector points written."""
    fill(table, 3)
    indexer.run()
    stats = indexer.pipe.stats
    encoded, upserted = stats.encoded, stats.points_upserted
    table.update(2, author="bob")
    assert indexer.run().changed == 1
    assert (stats.encoded - encoded, stats.points_upserted - upserted) == (0, 0)
    assert {p["metadata"]["author"] for p in indexer.payloads("2")} == {"bob"}
    indexer.assert_exact(table)


def test_soft_and_hard_deletes_remove_the_document(table, indexer):
    """A soft-deleted row (flag set) and a hard-deleted row (key diff) both leave the index."""
    fill(table, 4)
    indexer.run()
    table.update(1, deleted=True)
    table.delete(3)
    assert indexer.run().deleted == 2
    indexer.assert_exact(table)
    table.update(1, deleted=False)  # undeleted: back, outranking its tombstone
    assert indexer.run().added == 1
    indexer.assert_exact(table)


def test_orphans_are_indexed_documents_the_table_lacks_and_the_pass_does_not_delete(table, settings, db_url):
    """After a key diff, orphans() names documents the index holds but the table does not,
    except those the pass deletes itself (counted twice they would trip the mass-delete check)."""
    fill(table, 4)
    config = SqlTable(url=db_url, key="id", version="updated_at", rows=ROWS, table=NAME)
    source = SqlSource(config, _checkpoint(settings), name=NAME)
    try:
        source.commit(list(source.changes(PassReport())))
        table.delete(1)
        table.update(3, deleted=True)
        deletions = [c.doc_id for c in source.changes(PassReport()) if c.event and c.event.op == "delete"]
        assert sorted(deletions) == ["1", "3"]
        orphans = source.orphans({"1": 5, "2": 5, "3": 5, "4": 5, "99": 7})
        assert [(c.doc_id, c.event.op, c.event.version) for c in orphans if c.event] == [("99", "delete", 8)]
    finally:
        source.close()


def test_a_row_committed_late_with_an_older_cursor_is_indexed(table, indexer):
    """The look-back re-reads rows below the highest cursor; the key diff catches even older ones."""
    fill(table, 3)
    cursor_only = {"key_diff_every_s": None, "reconcile_every_s": None}
    indexer.run(**cursor_only)
    table.insert(4, "Late", body("a long transaction"), at=table.clock - dt.timedelta(seconds=30))
    assert indexer.run(**cursor_only).added == 1
    indexer.assert_exact(table)
    table.insert(5, "Very late", body("a forgotten batch"), at=table.clock - dt.timedelta(days=1))
    assert indexer.run(**cursor_only).added == 0  # beyond the look-back window...
    assert indexer.run(key_diff_every_s=0, reconcile_every_s=None).added == 1  # ...found by the key diff
    indexer.assert_exact(table)


def test_a_query_instead_of_a_table(table, indexer):
    """--query: the rows it selects are the documents; a row leaving the query's result is deleted."""
    fill(table, 3)
    query = f"SELECT id, title, body, author, updated_at, deleted FROM {NAME} WHERE author <> 'hidden'"
    assert indexer.run(table=None, query=query).added == 3
    table.update(2, author="hidden")
    table.update(3, body=body("an edit seen through the query"))
    summary = indexer.run(table=None, query=query)
    assert (summary.changed, summary.deleted) == (1, 1)
    table.delete(2)  # ground truth: what the query selects
    indexer.assert_exact(table)


def test_a_document_edited_a_b_a_ends_at_a(table, indexer):
    """Text A, then B, then A again (each indexed): the index holds A."""
    fill(table, 2)
    original = body("topic 1")
    indexer.run()
    table.update(1, body=body("something else entirely"))
    indexer.run()
    table.update(1, body=original)
    summary = indexer.run()
    assert (summary.changed, summary.encoded) == (1, 0)  # A's chunks were never forgotten
    indexer.assert_exact(table)


def test_the_snapshot_is_resumed_after_kill_9(table, settings, db_url, tiny_model, tmp_path):
    """kill -9 of `embedstream index` mid-snapshot, then a restart: it resumes and ends exact."""
    fill(table, 300)
    command = [
        sys.executable, "-c", "from pipeline.cli import main; main()", "index", "--sql-url", db_url,
        "--table", NAME, "--key", "id", "--version", "updated_at", "--text", r"{title}\n\n{body}",
        "--metadata", "author", "--deleted-column", "deleted", "--json",
        "--state-dir", str(settings.state_dir), "--model", str(tiny_model),
    ]  # fmt: skip
    env = {**os.environ, "EMBEDSTREAM_CHUNKING__MAX_TOKENS": "64"}
    env["EMBEDSTREAM_CHUNKING__OVERLAP_TOKENS"] = "8"
    killed = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=240, check=False,
        env={**env, "EMBEDSTREAM_CRASH_AT": "source.sql.after_checkpoint:2"},
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    states = KeyStates(_checkpoint(settings))
    resumed_after = decode_value(states.position(SNAPSHOT_AFTER))
    assert states.position(SNAPSHOT_DONE) is None
    assert isinstance(resumed_after, int)
    assert 0 < resumed_after < 300
    states.close()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240, check=True, env=env)
    summary = json.loads(done.stdout)
    assert summary["docs"]["added"] == 300 - resumed_after  # resumed, not started over
    indexer = Indexer(settings, db_url)
    try:
        indexer.assert_exact(table)
    finally:
        indexer.pipe.close()


def _checkpoint(settings: Settings) -> Path:
    return settings.state_dir / "indexes" / "docs" / "checkpoints" / f"{NAME}.sqlite"


@pytest.mark.kafka
def test_the_daemon_publishes_row_changes_to_kafka(tmp_path, kafka_settings, kafka_bus, poll_until):
    """`source sql` as a daemon (run_source over Kafka): snapshot rows, then an edit, as change events."""
    from pipeline.core.events import ChangeEvent
    from pipeline.core.names import Topics
    from pipeline.runtime.daemons import run_source

    table = Table(f"sqlite:///{tmp_path / 'daemon.db'}")
    fill(table, 3)
    settings = Settings.load(state_dir=tmp_path / "state").model_copy(update={"kafka": kafka_settings})
    config = SqlTable(url=str(table.engine.url), key="id", version="updated_at", rows=ROWS, table=NAME)
    source = SqlSource(config, tmp_path / "state" / "sources" / "articles.sqlite", name=NAME)
    stop = threading.Event()
    daemon = threading.Thread(target=run_source, args=(settings, source, stop, 0.2), daemon=True)
    daemon.start()
    consumer = kafka_bus.consumer("test-reader", [Topics(kafka_settings.topic_prefix).changes])
    try:
        first = poll_until(consumer, lambda got: len(got) >= 3)
        assert sorted(ChangeEvent.from_bytes(r.value).doc_id for r in first) == ["1", "2", "3"]
        table.update(2, body=body("an edit while the daemon runs"))
        (edit,) = [ChangeEvent.from_bytes(r.value) for r in poll_until(consumer, lambda got: len(got) >= 1)]
        assert edit.doc_id == "2"
        assert "an edit while the daemon runs" in (edit.text or "")
    finally:
        stop.set()
        daemon.join(timeout=30)
        consumer.close()
        source.close()
        table.engine.dispose()
    assert not daemon.is_alive()


def test_the_bench_compares_sql_snapshot_with_the_filesystem_path(tmp_path, settings):
    """ops/bench/sql_path.py indexes the same texts both ways and reports their throughput ratio."""
    from pipeline.runtime.adapters import make_encoder

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(6):
        (corpus / f"doc-{i}.md").write_text(f"# Document {i}\n\n" + body(f"subject {i}"), encoding="utf-8")
    sys.path.insert(0, str(REPO / "ops" / "bench"))
    try:
        sql_path = importlib.import_module("sql_path")
    finally:
        sys.path.remove(str(REPO / "ops" / "bench"))
    results = sql_path.measure_sql_path(tmp_path, settings, make_encoder(settings), corpus, pairs=1)
    assert results["sql_path_documents"] == 6
    assert results["ratio_sql_snapshot_vs_fs"] > 0
