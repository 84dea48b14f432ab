"""The embedded mode's commands: ``index`` (one pass), ``watch`` (follow a folder),
``search``, ``status`` and ``config``. Everything runs in this process, on the state dir."""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from prometheus_client import CollectorRegistry

from pipeline.cli import source_options, sources
from pipeline.cli.app import app, load_settings, run
from pipeline.cli.lookups import (
    dead_letters_reported_here,
    missing_state_dir,
    search_store,
    store_owned_elsewhere,
    store_status,
)
from pipeline.cli.options import (
    CommonOptions,
    JsonOpt,
    MassDeleteOpt,
    parse_filters,
    takes,
)
from pipeline.cli.render import (
    err,
    pass_reporter,
    print_backfills,
    print_indexed,
    print_json,
    print_results,
    print_status,
    print_watching,
    progress_bar,
    shown,
)
from pipeline.cli.signals import stop_on_signals
from pipeline.config.settings import Settings
from pipeline.observability.prometheus import PrometheusObserver
from pipeline.sources import Source
from pipeline.versions.search import MAX_K

if TYPE_CHECKING:
    from connectors.jsonl import InvalidLine
    from pipeline.runtime.backfill import Backfilled
    from pipeline.runtime.embedded import EmbeddedPipeline
    from pipeline.runtime.local import IndexSummary


@dataclass(frozen=True)
class OnePass:
    """What ``index`` reads: a folder, a table or a JSON lines file (exactly one is set)."""

    fs: sources.FsOptions | None
    sql: sources.SqlOptions | None
    jsonl: Path | None
    name: str | None
    allow_mass_delete: bool
    progress: bool

    def source_at(self, settings: Settings, home: Path) -> Source:
        """The source, its checkpoint under ``home`` (a version's backfill has its own)."""
        if self.sql:
            return sources.sql_source(self.sql, settings, home)
        if self.jsonl:
            return sources.jsonl_source(self.jsonl, self.name, settings, home)
        assert self.fs is not None
        return sources.fs_source(self.fs, settings, home)


@app.command()
@takes("config", "state_dir", "index", "model")
def index(
    common: CommonOptions,
    path: Annotated[
        Path | None,
        typer.Argument(help="Directory of documents (or --sql-url, --jsonl).", exists=True, file_okay=False),
    ] = None,
    source: source_options.ConnectorNameOpt = None,
    include: source_options.IncludeOpt = None,
    exclude: source_options.ExcludeOpt = None,
    rebind: source_options.RebindOpt = False,
    allow_mass_delete: MassDeleteOpt = False,
    follow_symlinks: source_options.FollowLinksOpt = False,
    sql_url: source_options.SqlUrlOpt = None,
    table: source_options.TableOpt = None,
    query: source_options.QueryOpt = None,
    key: source_options.KeyColumnOpt = "id",
    version: source_options.CursorOpt = None,
    lookback: source_options.LookbackOpt = 60.0,
    key_diff_every: source_options.KeyDiffOpt = None,
    text: source_options.TextOpt = None,
    metadata: source_options.MetadataOpt = None,
    deleted_column: source_options.DeletedColumnOpt = None,
    jsonl: source_options.JsonlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Index PATH, a table (--sql-url) or change events (--jsonl) once; unchanged text is never re-encoded."""
    given = [name for name, value in (("PATH", path), ("--sql-url", sql_url), ("--jsonl", jsonl)) if value]
    if len(given) != 1:
        shown = " and ".join(given) or "none"
        raise typer.BadParameter(f"give one of PATH, --sql-url and --jsonl, not {shown}")
    rows = sources.RowOptions(text, metadata, deleted_column)
    every = key_diff_every or 0.0  # one pass: look for hard deletes every time
    sql = (
        sources.SqlOptions(sql_url, table, query, key, version, rows, lookback, every, source, rebind)
        if sql_url
        else None
    )
    fs = sources.FsOptions(path, source or "fs", include, exclude, rebind, follow_symlinks) if path else None
    one = OnePass(fs, sql, jsonl, source, allow_mass_delete, progress=not as_json)
    summary, backfilled, invalid = run(lambda: _index_once(one, common))
    print_backfills(backfilled)
    if as_json:
        extra = {"invalid_lines": [line.as_json() for line in invalid]} if jsonl else {}
        print_json(summary.as_json() | extra)
        return
    print_indexed(str((sql_url and (table or "query")) or jsonl or path), summary, invalid)


def _index_once(
    one: OnePass, common: CommonOptions
) -> tuple[IndexSummary, list[Backfilled], list[InvalidLine]]:
    """One pass, then the same source replayed into any version a migration is building."""
    from pipeline.runtime.backfill import backfill_source
    from pipeline.runtime.embedded import EmbeddedPipeline
    from pipeline.runtime.local import index_source

    settings = load_settings(common)
    with store_owned_elsewhere(settings, "index"):
        pipeline = EmbeddedPipeline(settings)
    with pipeline, progress_bar(enabled=one.progress) as progress, dead_letters_reported_here():
        src = one.source_at(settings, settings.index_home)
        try:
            summary = index_source(pipeline, src, progress, allow_mass_delete=one.allow_mass_delete)
            if one.jsonl:  # an invalid line is dead-lettered by the source: counted there, not as a skip
                summary.rejected = summary.skipped.pop("invalid_line", 0)
            # A migration in progress: replay this source into the new version(s) too.
            backfilled = backfill_source(pipeline, src.name, partial(one.source_at, settings), progress)
            _ready_for_small_runs(pipeline)
            return summary, backfilled, list(getattr(src, "invalid", []))  # the JSON lines source's
        finally:
            getattr(src, "close", lambda: None)()


def _ready_for_small_runs(pipeline: EmbeddedPipeline) -> None:
    """A run that loaded torch anyway (a first index) leaves the small-call backend built, so
    the next small update or one-shot search starts in about a second instead of building it."""
    encoder = pipeline.encoder
    if getattr(encoder, "backend", None) == "torch":
        prepare = getattr(encoder, "prepare_small_backend", None)
        if prepare is not None:
            prepare()


@app.command()
@takes("config", "state_dir", "index", "model")
@source_options.follows(every=1.0)
def watch(
    common: CommonOptions,
    folder: source_options.Followed,
    allow_mass_delete: MassDeleteOpt = False,
    follow_symlinks: source_options.FollowLinksOpt = False,
    http: Annotated[
        str | None,
        typer.Option(
            metavar="HOST:PORT", help="Address for /metrics, /search.", envvar="EMBEDSTREAM_HTTP__ADDR"
        ),
    ] = None,
) -> None:
    """Keep following PATH until Ctrl-C; answers `embedstream search` from other terminals."""
    fs = replace(folder.fs, follow_symlinks=follow_symlinks)
    with_http = replace(common, http=http)
    run(lambda: _watch(fs, with_http, folder.interval, allow_mass_delete=allow_mass_delete))


def _watch(fs: sources.FsOptions, common: CommonOptions, interval: float, *, allow_mass_delete: bool) -> None:
    from pipeline.runtime.backfill import backfill_source
    from pipeline.runtime.embedded import EmbeddedPipeline
    from pipeline.runtime.local import watch_source
    from pipeline.runtime.serving import serve_pipeline

    settings = load_settings(common)
    registry = CollectorRegistry()
    observer = PrometheusObserver(registry, settings.index.name)
    stop = threading.Event()
    with store_owned_elsewhere(settings, "watch"):
        opened = EmbeddedPipeline(settings, observer=observer)
    with (
        opened as pipeline,
        dead_letters_reported_here(),
        serve_pipeline(pipeline, registry, settings.http.addr) as url,
        stop_on_signals(stop, settings.drain_timeout_s),
    ):
        src = sources.fs_source(fs, settings, settings.index_home)
        print_watching(fs.path, interval, url)
        # A migration in progress: the folder is replayed into the new version(s) first.
        print_backfills(
            backfill_source(pipeline, src.name, lambda home: sources.fs_source(fs, settings, home))
        )
        watch_source(pipeline, src, stop, interval, pass_reporter(), allow_mass_delete=allow_mass_delete)
    err.print("stopped cleanly")


@app.command()
@takes("config", "state_dir", "index", "model")
def search(
    common: CommonOptions,
    query: Annotated[str, typer.Argument(metavar="QUERY", help="What to look for, in plain words.")],
    k: Annotated[
        int,
        typer.Option(
            "-k",
            "--limit",
            metavar="N",
            min=1,
            max=MAX_K,
            envvar="EMBEDSTREAM_SEARCH_LIMIT",
            help="How many documents (a document counts once, by its best chunk).",
        ),
    ] = 10,
    filter_: Annotated[
        list[str] | None,
        typer.Option(
            "--filter",
            metavar="KEY=VALUE",
            envvar="EMBEDSTREAM_SEARCH_FILTER",
            help="Only documents whose metadata KEY equals VALUE, compared as text (a whole number "
            "also matches that number); doc_id and source are matched directly. Repeatable: all must hold.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Ranked documents for QUERY: best chunk per document, with score and snippet."""
    if not query.strip():
        raise typer.BadParameter("is empty: say what to look for", param_hint="QUERY")
    filters = parse_filters(filter_ or [])
    answer = run(lambda: search_store(load_settings(common), query, k, filters))
    if as_json:
        print_json(answer.results)
        return
    print_results(answer)


@app.command()
@takes("config", "state_dir", "index")
def status(
    common: CommonOptions,
    as_json: JsonOpt = False,
) -> None:
    """Collections of the index, which one the alias serves, document and point counts."""
    settings = run(lambda: load_settings(common))
    result = run(lambda: store_status(settings))
    if missing := missing_state_dir(settings):
        err.print(shown(missing))
    if as_json:
        print_json(result)
        return
    if not missing:
        print_status(result)


# Registered last by pipeline/cli/__init__.py: `embedstream --help` lists it after the others.
@takes("config", "state_dir")
def show_config(common: CommonOptions) -> None:
    """Print the effective configuration (flags > env > TOML > defaults), secrets masked."""
    settings = run(lambda: load_settings(common))
    sys.stdout.write(settings.masked_json() + "\n")
