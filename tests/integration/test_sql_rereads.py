"""The SQL connector reads rows again when its cursor cannot tell it to: a dead-lettered row
once the cause is gone, every row after a change of the source's spec (``--text``,
``--metadata``, ``--query``), and a periodic reconcile pass that finds updates the cursor
missed (a timestamp moved back, a table swapped for one with older timestamps).

SQLite file, embedded engine, tiny real model; the index is compared with ground truth
computed from the table's rows, vectors included (:mod:`tests.groundtruth`).
"""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from connectors.kit.rows import RowFormat
from connectors.sql import SqlSource, SqlTable
from pipeline.config.settings import Settings
from pipeline.runtime.adapters import make_chunker
from pipeline.runtime.embedded import EmbeddedPipeline
from pipeline.runtime.local import IndexSummary, index_source
from pipeline.versions.spec import live_version
from tests.conftest import REPO
from tests.groundtruth import assert_index_equals, expected_chunks
from tests.integration.test_sql_source import NAME, ROWS, Table, body

QUERY = f"SELECT id, title, body, author, updated_at, deleted FROM {NAME} WHERE id > 2"
DAEMON = 300.0  # `source sql`'s key diff interval: not every pass


@pytest.fixture
def table(tmp_path: Path) -> Iterator[Table]:
    handle = Table(f"sqlite:///{tmp_path / 'source.db'}")
    yield handle
    handle.engine.dispose()


def settings_with(tiny_settings: Settings, **limits: int) -> Settings:
    return tiny_settings.model_copy(update={"limits": tiny_settings.limits.model_copy(update=limits)})


def source(settings: Settings, tbl: Table, **config: Any) -> SqlSource:
    max_bytes = config.pop("max_bytes", 20_000)
    options = {"key": "id", "version": "updated_at", "rows": ROWS, "table": NAME, "lookback": 0.0, **config}
    checkpoint = settings.state_dir / "indexes" / "docs" / "checkpoints" / f"{NAME}.sqlite"
    return SqlSource(SqlTable(url=str(tbl.engine.url), **options), checkpoint, name=NAME, max_bytes=max_bytes)


def one_pass(pipe: EmbeddedPipeline, src: SqlSource) -> IndexSummary:
    return index_source(pipe, src)


def assert_exact(pipe: EmbeddedPipeline, documents: dict[str, str]) -> None:
    version = live_version(pipe.store, "docs")
    assert version is not None
    expected = expected_chunks(documents, make_chunker(pipe.encoder, pipe.settings), source=NAME)
    assert_index_equals(pipe.store, version, expected, pipe.encoder)


def fill(table: Table, count: int, start: int = 1) -> None:
    for i in range(start, start + count):
        table.insert(i, f"Article {i}", body(f"topic {i}"))


@pytest.mark.parametrize("key_diff_every_s", [0.0, DAEMON], ids=["index", "daemon"])
def test_a_row_over_the_size_limit_is_indexed_once_the_limit_is_raised(
    tiny_settings, table, key_diff_every_s
):
    """A row over max_doc_bytes is skipped; restarted with a higher limit, the next pass
    indexes it (the limit is part of the source's spec), with or without a key diff due."""
    table.insert(1, "Big", body("a long story", 12))
    fill(table, 2, start=2)
    with EmbeddedPipeline(tiny_settings) as pipe:
        small = source(tiny_settings, table, max_bytes=1_000, key_diff_every_s=key_diff_every_s)
        try:
            first = one_pass(pipe, small)
        finally:
            small.close()
        assert (first.added, first.skipped) == (2, {"too_large": 1})
        raised = source(tiny_settings, table, key_diff_every_s=key_diff_every_s, reconcile_every_s=None)
        try:
            assert one_pass(pipe, raised).added == 1
        finally:
            raised.close()
        assert_exact(pipe, table.documents())


@pytest.mark.parametrize("key_diff_every_s", [0.0, DAEMON], ids=["index", "daemon"])
def test_a_row_the_embed_stage_dead_letters_is_retried_once_the_cause_is_gone(
    tiny_settings, table, key_diff_every_s
):
    """A row with too many chunks is dead-lettered by the embed stage; once the workers run
    with a higher limit, the same source (a daemon keeps running) reads it again next pass."""
    fill(table, 2)
    table.insert(3, "Long", body("a long story", 12))
    fill(table, 1, start=4)  # a later row: the cursor moves past the dead-lettered one
    src = source(tiny_settings, table, key_diff_every_s=key_diff_every_s)
    try:
        with EmbeddedPipeline(settings_with(tiny_settings, max_chunks_per_doc=3)) as pipe:
            first = one_pass(pipe, src)
            assert (first.added, len(first.dead_letters)) == (3, 1)
        with EmbeddedPipeline(tiny_settings) as pipe:
            assert one_pass(pipe, src).added == 1
            assert one_pass(pipe, src).changed_anything is False
            assert_exact(pipe, table.documents())
    finally:
        src.close()


@pytest.mark.parametrize(
    "change",
    [{"rows": RowFormat("{title}: {body}", ("author",), "deleted")},
     {"rows": RowFormat("{title}\n\n{body}", ("author", "updated_at"), "deleted")},
     {"table": None, "query": QUERY}],
    ids=["text", "metadata", "query"],
)  # fmt: skip
def test_a_changed_spec_reads_every_row_again(tiny_settings, table, change):
    """--text, --metadata or --query changed: every row is read again (not only those in the
    look-back window), and the per-row digests decide what changed; then nothing is re-read."""
    for i in range(1, 5):
        table.insert(i, f"Article {i}", body(f"topic {i}"), at=table.clock - dt.timedelta(days=10 - i))
    quiet = {"key_diff_every_s": DAEMON, "reconcile_every_s": None}
    with EmbeddedPipeline(tiny_settings) as pipe:
        before = source(tiny_settings, table, **quiet)
        try:
            assert one_pass(pipe, before).added == 4
        finally:
            before.close()
        after = source(tiny_settings, table, **quiet, **change)
        try:
            summary = one_pass(pipe, after)
            assert one_pass(pipe, after).changed_anything is False
        finally:
            after.close()
        documents = documents_as(table, change.get("rows", ROWS))
        if "query" in change:
            assert (summary.changed, summary.deleted) == (0, 2)
            del documents["1"], documents["2"]
        else:
            assert summary.changed == 4
        assert_exact(pipe, documents)
        if "metadata" in change:
            version = live_version(pipe.store, "docs")
            assert version is not None
            assert all("updated_at" in p["metadata"] for _, p in pipe.store.scroll(version.collection))


def documents_as(table: Table, rows: RowFormat) -> dict[str, str]:
    with table.engine.connect() as connection:
        found = connection.execute(sa.select(table.table)).mappings().all()
    return {str(r["id"]): rows.text(r) for r in found if not r["deleted"]}


def _move_back(table: Table, id_: int, text: str) -> None:
    """An update whose timestamp is older than every cursor (a clock set back, a restore)."""
    table.update(id_, body=text, updated_at=dt.datetime(2001, 1, 1))


def test_the_reconcile_pass_finds_updates_the_cursor_cannot_see(tiny_settings, table):
    """A timestamp moved back beyond the look-back: `index` (a new source each run) finds
    it, and a daemon finds it at its next reconcile; unchanged rows are never re-encoded."""
    fill(table, 4)
    with EmbeddedPipeline(tiny_settings) as pipe:
        daemon = source(tiny_settings, table, key_diff_every_s=DAEMON, reconcile_every_s=3600.0)
        try:
            assert one_pass(pipe, daemon).added == 4
            _move_back(table, 2, body("an edit with an old timestamp"))
            assert one_pass(pipe, daemon).changed == 0  # not due yet: the cursor cannot see it
            encoded = pipe.stats.encoded
            daemon.config = SqlTable(**{**vars(daemon.config), "reconcile_every_s": 0.0})  # due now
            summary = one_pass(pipe, daemon)
            assert (summary.changed, summary.unchanged) == (1, 3)
            assert pipe.stats.encoded - encoded == len(
                make_chunker(pipe.encoder, tiny_settings).chunk(table.documents()["2"])
            )  # only the changed row's chunks
        finally:
            daemon.close()
        assert_exact(pipe, table.documents())
        _move_back(table, 3, body("another edit with an old timestamp"))
        once = source(tiny_settings, table)  # `index`: every run reconciles
        try:
            assert one_pass(pipe, once).changed == 1
        finally:
            once.close()
        assert_exact(pipe, table.documents())


def test_a_table_swapped_for_one_with_older_timestamps_is_reconciled(tiny_settings, table):
    """The table is replaced by a copy whose rows carry older timestamps and other texts."""
    fill(table, 3)
    with EmbeddedPipeline(tiny_settings) as pipe:
        src = source(tiny_settings, table, key_diff_every_s=DAEMON)
        try:
            one_pass(pipe, src)
        finally:
            src.close()
        for i in (1, 2, 3):
            _move_back(table, i, body(f"restored topic {i}"))
        again = source(tiny_settings, table, key_diff_every_s=DAEMON)
        try:
            assert one_pass(pipe, again).changed == 3
        finally:
            again.close()
        assert_exact(pipe, table.documents())


def _readme_sqlite_setup() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("### SQL tables", 1)[1]
    found = re.search(r"python3 - <<'EOF'\n(.*?)\nEOF\n", section, re.DOTALL)
    assert found is not None
    return found.group(1)


def test_the_readme_sqlite_example_moves_updated_at_on_a_plain_update(tmp_path):
    """The README's table has an update trigger: a plain UPDATE moves updated_at."""
    subprocess.run([sys.executable, "-c", _readme_sqlite_setup()], cwd=tmp_path, check=True, timeout=60)
    db = sqlite3.connect(tmp_path / "kb.db")
    try:
        (before,) = db.execute("SELECT updated_at FROM articles WHERE id = 2").fetchone()
        time.sleep(0.02)
        with db:
            db.execute("UPDATE articles SET body = 'Door sensors last three years.' WHERE id = 2")
        (after,) = db.execute("SELECT updated_at, body FROM articles WHERE id = 2").fetchone()[:1]
    finally:
        db.close()
    assert str(after) > str(before)
