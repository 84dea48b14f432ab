"""SQL snapshot throughput against the filesystem path, on the same texts.

The corpus' files are copied into a table (one row per file: its text as ``body``, an
integer ``updated_at``), then indexed A B A B...: a first index of the folder through the
filesystem connector and a snapshot of the table through the SQL connector, each into a
fresh state dir (cold cache: every chunk is encoded both ways), with one shared, warm
encoder. The ratio says what reading rows instead of files costs end to end (1.0: nothing).

Used by ``ops/bench/run.py``::

    from sql_path import measure_sql_path
    results.update(measure_sql_path(work, settings, encoder, work / "corpus"))

``url`` indexes from another database (PostgreSQL: ``postgresql+psycopg://…``) instead of
a SQLite file under ``work``; the table ``bench_docs`` is replaced there.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from connectors.filesystem import FilesystemSource
from connectors.kit.rows import RowFormat
from connectors.sql import SqlSource, SqlTable
from pipeline.config.settings import Settings
from pipeline.encoding import Encoder
from pipeline.runtime.embedded import EmbeddedPipeline
from pipeline.runtime.local import IndexSummary, index_source
from pipeline.sources import Source

TABLE = "bench_docs"
Results = dict[str, float]


def measure_sql_path(
    work: Path, settings: Settings, encoder: Encoder, corpus: Path, *, pairs: int = 3, url: str | None = None
) -> Results:
    """Median docs/s of both paths over ``pairs`` alternating runs, and their ratio."""
    url = url or f"sqlite:///{work / 'sql-bench.db'}"
    documents = fill_table(url, corpus)
    fs_rates, sql_rates, ratios = [], [], []
    for number in range(pairs):
        fs = _run(work / f"sql-bench-fs-{number}", settings, encoder, lambda home: _fs(corpus, home))
        sql = _run(work / f"sql-bench-sql-{number}", settings, encoder, lambda home: _sql(url, home))
        assert fs.added == sql.added == documents, (fs.added, sql.added, documents)
        fs_rates.append(documents / fs.seconds)
        sql_rates.append(documents / sql.seconds)
        ratios.append(sql_rates[-1] / fs_rates[-1])
    return {
        "sql_path_documents": documents,
        "fs_first_index_docs_per_s": statistics.median(fs_rates),
        "sql_snapshot_docs_per_s": statistics.median(sql_rates),
        "ratio_sql_snapshot_vs_fs": statistics.median(ratios),
        "ratio_sql_snapshot_vs_fs_min": min(ratios),
        "ratio_sql_snapshot_vs_fs_max": max(ratios),
    }


def fill_table(url: str, corpus: Path) -> int:
    """One row per file of ``corpus`` (relative path as ``path``); returns the row count."""
    files = sorted(p for p in corpus.rglob("*") if p.is_file() and not p.name.startswith("."))
    engine = sa.create_engine(url)
    table = sa.Table(
        TABLE, sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("path", sa.Text), sa.Column("body", sa.Text), sa.Column("updated_at", sa.BigInteger),
    )  # fmt: skip
    try:
        table.drop(engine, checkfirst=True)
        table.create(engine)
        rows = [
            {"id": i, "path": p.relative_to(corpus).as_posix(), "body": p.read_text(encoding="utf-8"),
             "updated_at": p.stat().st_mtime_ns}
            for i, p in enumerate(files, 1)
        ]  # fmt: skip
        with engine.begin() as connection:
            connection.execute(table.insert(), rows)
    finally:
        engine.dispose()
    return len(files)


def _run(state: Path, settings: Settings, encoder: Encoder, source_at: Callable[[Path], Source]) -> IndexSummary:
    fresh = settings.model_copy(update={"state_dir": state})
    home = state / "indexes" / fresh.index.name
    with EmbeddedPipeline(fresh, encoder=encoder) as pipeline:
        source = source_at(home)
        try:
            return index_source(pipeline, source)
        finally:
            getattr(source, "close", lambda: None)()


def _fs(corpus: Path, home: Path) -> FilesystemSource:
    return FilesystemSource(corpus, home / "checkpoints" / "bench.json", name="bench")


def _sql(url: str, home: Path) -> SqlSource:
    rows = RowFormat("{body}", ("path",))
    config = SqlTable(url=url, key="id", version="updated_at", rows=rows, table=TABLE)
    return SqlSource(config, home / "checkpoints" / "bench.sqlite", name="bench")
