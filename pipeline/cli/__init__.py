"""The ``embedstream`` command: each command builds settings and calls the library.

Logging is configured here and nowhere else. Exit codes are the named constants below.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from prometheus_client import CollectorRegistry
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from pipeline.cli.sources import (
    ConnectorNameOpt,
    CursorOpt,
    DaemonSqlUrlOpt,
    DebeziumOptions,
    DeletedColumnOpt,
    JsonlOpt,
    KeyColumnOpt,
    KeyDiffOpt,
    LookbackOpt,
    MetadataOpt,
    QueryOpt,
    RowOptions,
    SqlOptions,
    SqlUrlOpt,
    TableOpt,
    TextOpt,
    checked_name,
    debezium_source,
    jsonl_source,
    sql_source,
)
from pipeline.config.layers import Override
from pipeline.config.settings import ENV_PREFIX, LOG_LEVELS, Settings
from pipeline.core.errors import (
    AuthenticationFailed,
    EmbedstreamError,
    FatalError,
    Refused,
    RetryableError,
    StoreLocked,
)
from pipeline.observability import logs
from pipeline.runtime.embedded import EmbeddedPipeline

if TYPE_CHECKING:
    from pipeline.versions.search import SearchAnswer

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_STORE_LOCKED = 4
EXIT_UNAVAILABLE = 5
EXIT_DRAIN_TIMEOUT = 6
EXIT_INTERRUPTED = 130

log = logging.getLogger("embedstream")
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")

app = typer.Typer(
    help="Keep a Qdrant vector index in step with your documents: chunk, deduplicate, embed, upsert.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", metavar="FILE", help="TOML settings file.", envvar="EMBEDSTREAM_CONFIG"),
]
StateOpt = Annotated[
    Path | None,
    typer.Option(
        metavar="DIR",
        help="Where the embedded store, cache and checkpoints live.",
        envvar="EMBEDSTREAM_STATE_DIR",
    ),
]
IndexOpt = Annotated[
    str | None,
    typer.Option("--index", metavar="NAME", help="Index (alias) name.", envvar="EMBEDSTREAM_INDEX__NAME"),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        metavar="MODEL",
        help="Model directory, or all-MiniLM-L6-v2 (bundled).",
        envvar="EMBEDSTREAM_MODEL__NAME",
    ),
]
# metavar="" shows a flag as a flag (typer would print <bool>).
JsonOpt = Annotated[
    bool,
    typer.Option(
        "--json", metavar="", help="Print one JSON document for scripts.", envvar="EMBEDSTREAM_JSON"
    ),
]


# Flags of the main callback (--log-level, --strict), for load_settings to pass on.
_GLOBAL_FLAGS: ContextVar[tuple[Override, ...]] = ContextVar("embedstream_global_flags", default=())
# --config given before the command (`embedstream --config f.toml index ...`).
_GLOBAL_CONFIG: ContextVar[Path | None] = ContextVar("embedstream_global_config", default=None)


def load_settings(
    config: Path | None,
    state_dir: Path | None,
    index: str | None,
    model: str | None,
    *,
    flags: Sequence[Override] = (),
) -> Settings:
    """Flags > env > TOML > defaults, validated once: a flag gets the checks its env variable
    gets, and an error names it (``index.name: ... (from flag --index)``). ``flags`` are a
    command's further options, e.g. ``Override("http.addr", http, "flag --http")``."""
    given = [
        *_GLOBAL_FLAGS.get(),
        *_shared_flags(state_dir, index, model),
        *flags,
    ]
    settings = Settings.load(config or _GLOBAL_CONFIG.get(), flags=given, known_env=_cli_env_vars())
    logs.configure(settings.log_level)
    return settings


@functools.cache
def _cli_env_vars() -> frozenset[str]:
    """EMBEDSTREAM_* variables that options read: not settings, so never "unknown"."""
    names = {"EMBEDSTREAM_CRASH_AT"}  # read by main() for fault-injection tests
    commands = [command()]
    while commands:
        each = commands.pop()
        names.update(p.envvar for p in each.params if isinstance(p.envvar, str))
        commands.extend(getattr(each, "commands", {}).values())
    return frozenset(names)


@functools.cache
def command() -> Any:
    """The click command behind `embedstream`, every option naming its environment variable
    in `--help`: its own, else ``EMBEDSTREAM_<COMMAND>_<OPTION>`` (click's auto_envvar
    convention, e.g. ``EMBEDSTREAM_INDEX_INCLUDE``, ``EMBEDSTREAM_MIGRATE_START_DIMS``)."""
    root = typer.main.get_command(app)
    _name_env_vars(root, [])
    return root


_NO_ENV = {"help", "version", "install_completion", "show_completion"}


def _name_env_vars(each: Any, path: list[str]) -> None:
    # Typer ships its own click: options are told apart by what they are, not their class.
    for param in each.params:
        is_option = getattr(param, "param_type_name", "") == "option"
        if is_option and param.name in ("install_completion", "show_completion"):
            param.metavar = ""  # typer's own flags: shown as flags, not <bool>
        if is_option and not param.envvar and param.name not in _NO_ENV:
            param.envvar = "_".join(["EMBEDSTREAM", *path, param.name or ""]).upper().replace("-", "_")
            param.show_envvar = True
    each.get_help_option = _flag_shaped(each.get_help_option)
    for name, sub in getattr(each, "commands", {}).items():
        _name_env_vars(sub, [*path, name])


def _flag_shaped(make: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """click builds --help per invocation; show it as the flag it is, not <bool>."""

    def help_option(ctx: Any) -> Any:
        option = make(ctx)
        if option is not None:
            option.metavar = ""
        return option

    return help_option


def _shared_flags(state_dir: Path | None, index: str | None, model: str | None) -> list[Override]:
    """The options every command has (before or after its name)."""
    return [
        *_flag("state_dir", state_dir, "--state-dir"),
        *_flag("index.name", index, "--index"),
        *_flag("model.name", model, "--model"),
    ]


def _flag(key: str, value: object, option: str) -> list[Override]:
    """An option's value as a flag, unless unset or filled by typer from the setting's own
    variable: the settings read that variable themselves and name it, not the flag, in errors."""
    if value is None:
        return []
    envvar = ENV_PREFIX + key.upper().replace(".", "__")
    from_env = os.environ.get(envvar)
    if from_env is not None and value == (Path(from_env) if isinstance(value, Path) else from_env):
        return []
    return [Override(key, value, f"flag {option}")]


def run(action: Callable[[], T]) -> T:
    """Map the error tree to messages and exit codes, in one place."""
    try:
        return action()
    except Refused as exc:  # a safety check: the message names the flag that overrides it
        _print_error("refused", exc)
        raise typer.Exit(EXIT_USAGE) from exc
    except StoreLocked as exc:
        _print_error("error", exc)
        raise typer.Exit(EXIT_STORE_LOCKED) from exc
    except AuthenticationFailed as exc:  # a dependency refuses us: not a retryable outage
        _print_error("error", exc)
        raise typer.Exit(EXIT_UNAVAILABLE) from exc
    except FatalError as exc:
        _print_error("error", exc)
        raise typer.Exit(EXIT_CONFIG) from exc
    except RetryableError as exc:
        _print_error("unavailable", exc)
        raise typer.Exit(EXIT_UNAVAILABLE) from exc
    except EmbedstreamError as exc:
        _print_error("error", exc)
        raise typer.Exit(EXIT_FAILURE) from exc
    except KeyboardInterrupt as exc:
        err.print("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from exc


def _show_version(value: bool) -> None:
    if value:
        try:
            version = importlib.metadata.version("embedstream")
        except importlib.metadata.PackageNotFoundError:
            version = "unknown (not installed)"
        sys.stdout.write(f"embedstream {version}\n")
        raise typer.Exit(EXIT_OK)


def _print_error(label: str, exc: Exception) -> None:
    # One line per problem (a ConfigError may carry several); escaped, because messages
    # quote user text such as "[index]" that rich would take for markup.
    for line in str(exc).splitlines() or [type(exc).__name__]:
        err.print(f"[red]{label}:[/] {escape(line)}")


@app.callback()
def main_callback(
    ctx: typer.Context,
    log_level: Annotated[
        str | None,
        typer.Option(
            metavar="LEVEL",
            help="DEBUG, INFO, WARNING or ERROR, in any case (default WARNING; setting log_level).",
            envvar="EMBEDSTREAM_LOG_LEVEL",
        ),
    ] = None,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            metavar="",
            help="Unknown keys in the TOML file or EMBEDSTREAM_* env are errors, not warnings.",
            envvar="EMBEDSTREAM_STRICT",
        ),
    ] = False,
    version: Annotated[  # noqa: ARG001 -- typer calls _show_version; the value is not needed here
        bool,
        typer.Option(
            "--version", metavar="", help="Print the version and exit.", callback=_show_version, is_eager=True
        ),
    ] = False,
    config: ConfigOpt = None,
    state_dir: StateOpt = None,
    index_name: IndexOpt = None,
    model: ModelOpt = None,
) -> None:
    """The options shared by every command may also come before it:
    `embedstream --state-dir S index PATH` is `embedstream index PATH --state-dir S`
    (given in both places, the one after the command wins)."""
    flags = _shared_flags(state_dir, index_name, model)
    _GLOBAL_CONFIG.set(config)
    if log_level is not None and _on_command_line(ctx, "log_level"):
        flags.append(Override("log_level", log_level, "flag --log-level"))
    if strict and _on_command_line(ctx, "strict"):
        flags.append(Override("strict", True, "flag --strict"))
    _GLOBAL_FLAGS.set(tuple(flags))
    # Until load_settings applies the configured level, warnings about settings must show.
    level = (log_level or "").upper()
    logs.configure(level if level in LOG_LEVELS else "WARNING")


def _on_command_line(ctx: typer.Context, name: str) -> bool:
    """Typed by the user, not filled from an env variable (the settings read that one)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


SourceNameOpt = Annotated[
    str,
    typer.Option(
        "--source",
        metavar="NAME",
        help="Source name: document keys are NAME/relative-path. One name stands for one folder per index.",
    ),
]
IncludeOpt = Annotated[
    list[str] | None,
    typer.Option(
        metavar="GLOB",
        help="Index only matching files (repeatable; gitignore-style: '*.md' matches at any depth, "
        "'docs/*.md' only under docs/). Default: the text types listed in the README.",
    ),
]
ExcludeOpt = Annotated[
    list[str] | None,
    typer.Option(metavar="GLOB", help="Skip matching files (repeatable; same rules as --include)."),
]
RebindOpt = Annotated[
    bool,
    typer.Option(
        "--rebind",
        metavar="",
        help="The source name's folder moved here (renamed): keep its documents under the new path.",
    ),
]
MassDeleteOpt = Annotated[
    bool,
    typer.Option(
        "--allow-mass-delete",
        metavar="",
        help="Allow a pass to delete more than half of the source's indexed documents.",
    ),
]
FollowLinksOpt = Annotated[
    bool,
    typer.Option(
        "--follow-symlinks", metavar="", help="Also index files whose symlinks point outside the folder."
    ),
]


@app.command()
def index(
    path: Annotated[
        Path | None,
        typer.Argument(help="Directory of documents (or --sql-url, --jsonl).", exists=True, file_okay=False),
    ] = None,
    source: ConnectorNameOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    rebind: RebindOpt = False,
    allow_mass_delete: MassDeleteOpt = False,
    follow_symlinks: FollowLinksOpt = False,
    sql_url: SqlUrlOpt = None,
    table: TableOpt = None,
    query: QueryOpt = None,
    key: KeyColumnOpt = "id",
    version: CursorOpt = None,
    lookback: LookbackOpt = 60.0,
    key_diff_every: KeyDiffOpt = None,
    text: TextOpt = None,
    metadata: MetadataOpt = None,
    deleted_column: DeletedColumnOpt = None,
    jsonl: JsonlOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    state_dir: StateOpt = None,
    index_name: IndexOpt = None,
    model: ModelOpt = None,
) -> None:
    """Index PATH, a table (--sql-url) or change events (--jsonl) once; unchanged text is never re-encoded."""
    given = [name for name, value in (("PATH", path), ("--sql-url", sql_url), ("--jsonl", jsonl)) if value]
    if len(given) != 1:
        shown = " and ".join(given) or "none"
        raise typer.BadParameter(f"give one of PATH, --sql-url and --jsonl, not {shown}")
    rows = RowOptions(text, metadata, deleted_column)
    invalid: list[Any] = []  # the JSON lines source's reported lines

    def action() -> Any:
        from pipeline.runtime.backfill import backfill_source
        from pipeline.runtime.local import index_source

        settings = load_settings(config, state_dir, index_name, model)
        home = settings.index_home

        def make_source(home: Path) -> Any:
            """The source, its checkpoint under ``home`` (a version's backfill has its own)."""
            if sql_url:
                every = key_diff_every or 0.0  # one pass: look for hard deletes every time
                sql = SqlOptions(sql_url, table, query, key, version, rows, lookback, every, source, rebind)
                return sql_source(sql, settings, home)
            if jsonl:
                return jsonl_source(jsonl, source, settings, home)
            assert path is not None
            fs = FsOptions(path, source or "fs", include, exclude, follow_symlinks, rebind)
            return _fs_source(fs, settings, home)

        with EmbeddedPipeline(settings) as pipeline, _progress(enabled=not as_json) as progress:
            src = make_source(home)
            try:
                summary = index_source(pipeline, src, progress, allow_mass_delete=allow_mass_delete)
                # A migration in progress: replay this source into the new version(s) too.
                backfilled.extend(backfill_source(pipeline, src.name, make_source, progress))
                _ready_for_small_runs(pipeline)
                return summary
            finally:
                invalid.extend(getattr(src, "invalid", []))
                getattr(src, "close", lambda: None)()

    backfilled: list[Any] = []
    summary = run(action)
    _print_backfills(backfilled)
    if as_json:
        extra = {"invalid_lines": [line.as_json() for line in invalid]} if jsonl else {}
        out.print_json(json.dumps(summary.as_json() | extra))
        return
    label = (sql_url and (table or "query")) or jsonl or path
    out.print(f"[bold]indexed[/] {escape(str(label))} in {summary.seconds:.1f}s  " + _summary_line(summary))
    _print_details(summary)
    for line in invalid:
        out.print(f"[yellow]invalid line {line.line}[/]: {escape(line.error)} (dead-lettered)")


def _print_backfills(backfilled: Sequence[Any]) -> None:
    for done in backfilled:
        err.print(
            f"backfilled {escape(done.label)} from source {escape(done.source)}: {done.documents} documents, "
            f"{done.encoded} chunks encoded"
        )


def _ready_for_small_runs(pipeline: EmbeddedPipeline) -> None:
    """A run that loaded torch anyway (a first index) leaves the small-call backend built, so
    the next small update or one-shot search starts in about a second instead of building it."""
    encoder = pipeline.encoder
    if getattr(encoder, "backend", None) == "torch":
        prepare = getattr(encoder, "prepare_small_backend", None)
        if prepare is not None:
            prepare()


def _summary_line(summary: Any) -> str:
    docs = summary.as_json()["docs"]
    shown = ", ".join(f"{v} {k}" for k, v in docs.items() if v or k != "stale")
    return f"docs: {shown}  chunks: {summary.encoded} encoded, {summary.reused} reused"


def _print_details(summary: Any) -> None:
    if summary.skipped:
        out.print("skipped: " + ", ".join(f"{n} {r}" for r, n in sorted(summary.skipped.items())))
    for letter in summary.dead_letters:
        key, message = escape(letter["key"]), escape(str(letter.get("error.message")))
        out.print(f"[yellow]dead-lettered[/] {key}: {message} (retried next pass; `embedstream dlq list`)")


@app.command()
def watch(
    path: Annotated[Path, typer.Argument(help="Directory of documents.", exists=True, file_okay=False)],
    interval: Annotated[float, typer.Option(metavar="SECONDS", help="Seconds between rescans.")] = 1.0,
    source: SourceNameOpt = "fs",
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    rebind: RebindOpt = False,
    allow_mass_delete: MassDeleteOpt = False,
    follow_symlinks: FollowLinksOpt = False,
    http: Annotated[
        str | None,
        typer.Option(
            metavar="HOST:PORT", help="Address for /metrics, /search.", envvar="EMBEDSTREAM_HTTP__ADDR"
        ),
    ] = None,
    config: ConfigOpt = None,
    state_dir: StateOpt = None,
    index_name: IndexOpt = None,
    model: ModelOpt = None,
) -> None:
    """Keep following PATH until Ctrl-C; answers `embedstream search` from other terminals."""

    def action() -> None:
        from pipeline.observability.prometheus import PrometheusObserver
        from pipeline.runtime.backfill import backfill_source
        from pipeline.runtime.local import IndexSummary, watch_source
        from pipeline.runtime.serving import serve_pipeline

        http_flag = _flag("http.addr", http, "--http")
        settings = load_settings(config, state_dir, index_name, model, flags=http_flag)
        registry = CollectorRegistry()
        observer = PrometheusObserver(registry, settings.index.name)
        stop = threading.Event()
        fs = FsOptions(path, source, include, exclude, follow_symlinks, rebind)
        with (
            EmbeddedPipeline(settings, observer=observer) as pipeline,
            serve_pipeline(pipeline, registry, settings.http.addr) as url,
            _stop_on_signals(stop, settings.drain_timeout_s),
        ):
            src = _fs_source(fs, settings, settings.index_home)
            err.print(
                f"watching {escape(str(path))} (every {interval}s); queries served at {url}; Ctrl-C to stop"
            )
            passes = 0

            def report(summary: IndexSummary) -> None:
                nonlocal passes
                passes += 1
                label = "first pass" if passes == 1 else "updated"
                err.print(f"{label} in {summary.seconds:.1f}s: " + _summary_line(summary))
                _print_details(summary)

            # A migration in progress: the folder is replayed into the new version(s) first.
            _print_backfills(backfill_source(pipeline, src.name, lambda home: _fs_source(fs, settings, home)))
            watch_source(pipeline, src, stop, interval, report, allow_mass_delete=allow_mass_delete)
        err.print("stopped cleanly")

    run(action)


@app.command()
def search(
    query: Annotated[str, typer.Argument(metavar="QUERY", help="What to look for, in plain words.")],
    k: Annotated[
        int,
        typer.Option(
            "-k",
            "--limit",
            metavar="N",
            min=1,
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
    config: ConfigOpt = None,
    state_dir: StateOpt = None,
    index_name: IndexOpt = None,
    model: ModelOpt = None,
) -> None:
    """Ranked documents for QUERY: best chunk per document, with score and snippet."""
    if not query.strip():
        raise typer.BadParameter("is empty: say what to look for", param_hint="QUERY")
    filters = _parse_filters(filter_ or [])
    answer = run(lambda: _search(load_settings(config, state_dir, index_name, model), query, k, filters))
    if as_json:
        out.print_json(json.dumps(answer.results))
        return
    if not answer.results:
        out.print(escape(answer.empty or "no results"))
    for rank, result in enumerate(answer.results, 1):
        snippet = escape(" ".join(str(result["text"]).split())[:200])
        out.print(
            f"[bold]{rank}. {escape(result['doc_id'])}[/]  [dim]score {result['score']:.3f}[/]\n   {snippet}"
        )


def _search(settings: Settings, query: str, k: int, filters: dict[str, str]) -> SearchAnswer:
    """Answered by the running watcher when one owns the store, else by the store itself."""
    from pipeline.runtime.adapters import make_encoder, open_store
    from pipeline.runtime.models import VersionEncoders
    from pipeline.runtime.serving import remote_search
    from pipeline.versions.search import SearchAnswer, live_documents, nothing_found, search_documents
    from pipeline.versions.spec import live_version

    encoder = make_encoder(settings)
    remote = remote_search(settings, encoder.fingerprint, query, k, filters)
    if remote is not None:
        return remote
    store = open_store(settings)
    try:
        version = live_version(store, settings.index.name)
        if version is not None:  # the live version's own model: a promote or rollback applies at once
            encoder = VersionEncoders(settings, encoder).for_version(version)
        results = search_documents(store, version, encoder, query, k, filters)
        documents = 0 if results else live_documents(store, version)
    finally:
        store.close()
    empty = None if results else nothing_found(settings.index.name, documents, filters)
    return SearchAnswer([r.as_json() for r in results], empty)


@app.command()
def status(
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    state_dir: StateOpt = None,
    index_name: IndexOpt = None,
) -> None:
    """Collections of the index, which one the alias serves, document and point counts."""

    def action() -> dict[str, Any]:
        from pipeline.runtime.adapters import open_store
        from pipeline.runtime.embedded import index_status
        from pipeline.runtime.serving import remote_status

        settings = load_settings(config, state_dir, index_name, None)
        remote = remote_status(settings)
        if remote is not None:
            return remote
        store = open_store(settings)
        try:
            return index_status(store, settings.index.name)
        finally:
            store.close()

    result = run(action)
    if as_json:
        out.print_json(json.dumps(result))
        return
    columns = ("collection", "live", "model", "dims", "datatype", "quantization", "documents", "points")
    table = Table(title=escape(f"index {result['alias']!r} → {result['live'] or '(no live version)'}"))
    for column in columns:
        table.add_column(column)
    for version in result["versions"]:
        table.add_row(*(escape(str(version[c])) for c in columns))
    out.print(table)


topics_app = typer.Typer(
    help="Kafka topics: create the pipeline's topics (idempotent).", no_args_is_help=True
)
dlq_app = typer.Typer(help="Dead-letter queue: inspect and replay poison events.", no_args_is_help=True)
source_app = typer.Typer(help="Source connectors that publish change events to Kafka.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(dlq_app, name="dlq")
app.add_typer(source_app, name="source")

VersionOpt = Annotated[int, typer.Option("--version", help="Index version N (collection NAME__vN).", min=1)]
HttpOpt = Annotated[
    str | None,
    typer.Option(
        "--http", help="host:port for /metrics, /healthz, /readyz.", envvar="EMBEDSTREAM_HTTP__ADDR"
    ),
]
BootstrapOpt = Annotated[
    str | None,
    typer.Option("--bootstrap", help="Kafka bootstrap servers.", envvar="EMBEDSTREAM_KAFKA__BOOTSTRAP"),
]


def daemon_settings(
    config: Path | None, state_dir: Path | None, index: str | None, model: str | None,
    http: str | None, bootstrap: str | None,
) -> Settings:  # fmt: skip
    flags = [
        *_flag("http.addr", http, "--http"),
        *_flag("kafka.bootstrap", bootstrap, "--bootstrap"),
    ]
    return load_settings(config, state_dir, index, model, flags=flags)


def run_daemon(settings: Settings, body: Callable[[threading.Event], None]) -> None:
    """Run a daemon until SIGTERM/SIGINT; the batch in flight finishes and is committed."""
    stop = threading.Event()

    def action() -> None:
        with _stop_on_signals(stop, settings.drain_timeout_s):
            body(stop)

    run(action)


@topics_app.command("create")
def topics_create(
    version: VersionOpt = 1,
    config: ConfigOpt = None,
    index_name: IndexOpt = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Create <prefix>.changes, <prefix>.vectors.<index>-v<N> (compacted) and <prefix>.dlq."""

    def action() -> None:
        from pipeline.observability import NullObserver
        from pipeline.runtime import Runtime

        settings = daemon_settings(config, None, index_name, None, None, bootstrap)
        specs = Runtime(settings, NullObserver()).topic_specs(version)
        with _kafka(settings) as (bus, _topics):
            bus.ensure_topics(specs)
        for spec in specs:
            kind = "compacted" if spec.compacted else "delete"
            out.print(f"{spec.name}: {spec.partitions} partitions, replication {spec.replication}, {kind}")

    run(action)


@source_app.command("fs")
def source_fs(
    path: Annotated[Path, typer.Argument(help="Directory of documents.", exists=True, file_okay=False)],
    interval: Annotated[float, typer.Option(metavar="SECONDS", help="Seconds between rescans.")] = 2.0,
    source: SourceNameOpt = "fs",
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    rebind: RebindOpt = False,
    follow_symlinks: FollowLinksOpt = False,
    config: ConfigOpt = None,
    state_dir: StateOpt = None,
    http: HttpOpt = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Publish PATH's new, changed and deleted files to <prefix>.changes, forever."""
    from pipeline.runtime.daemons import run_source

    settings = run(lambda: daemon_settings(config, state_dir, None, None, http, bootstrap))
    fs = FsOptions(path, source, include, exclude, follow_symlinks, rebind)
    src = run(lambda: _fs_source(fs, settings, settings.state_dir / "sources"))
    run_daemon(settings, lambda stop: run_source(settings, src, stop, interval))


@source_app.command("sql")
def source_sql(
    url: DaemonSqlUrlOpt,
    table: TableOpt = None,
    query: QueryOpt = None,
    key: KeyColumnOpt = "id",
    version: CursorOpt = None,
    text: TextOpt = None,
    metadata: MetadataOpt = None,
    deleted_column: DeletedColumnOpt = None,
    lookback: LookbackOpt = 60.0,
    key_diff_every: KeyDiffOpt = 300.0,
    interval: Annotated[float, typer.Option(metavar="SECONDS", help="Seconds between polls.")] = 2.0,
    source: ConnectorNameOpt = None,
    rebind: RebindOpt = False,
    config: ConfigOpt = None,
    state_dir: StateOpt = None,
    http: HttpOpt = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Publish a table's new, changed and deleted rows to <prefix>.changes, forever."""
    from pipeline.runtime.daemons import run_source

    settings = run(lambda: daemon_settings(config, state_dir, None, None, http, bootstrap))
    rows = RowOptions(text, metadata, deleted_column)
    sql = SqlOptions(url, table, query, key, version, rows, lookback, key_diff_every, source, rebind)
    src = run(lambda: sql_source(sql, settings, settings.state_dir / "sources"))
    try:
        run_daemon(settings, lambda stop: run_source(settings, src, stop, interval))
    finally:
        src.close()


@source_app.command("debezium")
def source_debezium(
    topic: Annotated[
        list[str], typer.Option("--topic", metavar="TOPIC", help="Debezium change topic (repeatable).")
    ],
    text: TextOpt = None,
    key: Annotated[
        str | None, typer.Option("--key", metavar="COLUMN", help="Id column (default: the record key).")
    ] = None,
    metadata: MetadataOpt = None,
    deleted_column: DeletedColumnOpt = None,
    group: Annotated[
        str | None, typer.Option(metavar="GROUP", help="Consumer group (default <prefix>.debezium.NAME).")
    ] = None,
    interval: Annotated[float, typer.Option(metavar="SECONDS", help="Pause between passes.")] = 0.0,
    source: ConnectorNameOpt = None,
    config: ConfigOpt = None,
    state_dir: StateOpt = None,
    http: HttpOpt = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Turn Debezium change topics into change events on <prefix>.changes, forever; offsets
    move only once the changes are published."""
    from pipeline.runtime.daemons import run_source

    settings = run(lambda: daemon_settings(config, state_dir, None, None, http, bootstrap))
    options = DebeziumOptions(topic, group, key, RowOptions(text, metadata, deleted_column), source)
    with _kafka(settings) as (bus, _topics):
        src = run(lambda: debezium_source(options, settings, bus, settings.state_dir / "sources"))
        try:
            run_daemon(settings, lambda stop: run_source(settings, src, stop, interval))
        finally:
            src.close()


@app.command()
def embed(
    version: VersionOpt = 1,
    config: ConfigOpt = None,
    state_dir: StateOpt = None,
    index_name: IndexOpt = None,
    model: ModelOpt = None,
    http: HttpOpt = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Embedding worker: changes -> vectors. Run one per GPU; they share partitions in a group."""
    from pipeline.runtime.daemons import run_embed

    settings = daemon_settings(config, state_dir, index_name, model, http, bootstrap)
    run_daemon(settings, lambda stop: run_embed(settings, version, stop))


@app.command()
def sink(
    version: VersionOpt = 1,
    config: ConfigOpt = None,
    state_dir: StateOpt = None,
    index_name: IndexOpt = None,
    http: HttpOpt = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Sink worker: vectors -> Qdrant (server via store.url, else the embedded engine, one owner)."""
    from pipeline.runtime.daemons import run_sink

    settings = daemon_settings(config, state_dir, index_name, None, http, bootstrap)
    run_daemon(settings, lambda stop: run_sink(settings, version, stop))


@dlq_app.command("list")
def dlq_list(
    limit: Annotated[int, typer.Option(metavar="N", help="At most this many entries.")] = 100,
    local: Annotated[
        bool,
        typer.Option(
            "--local",
            metavar="",
            help="Read the embedded mode's log in the state dir, even if Kafka is configured.",
        ),
    ] = False,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    state_dir: StateOpt = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Show dead-lettered events: key, reason, message, where they came from.

    Without Kafka configured (no --bootstrap, EMBEDSTREAM_KAFKA__BOOTSTRAP or kafka.bootstrap),
    this lists the embedded mode's local dead-letter log (state_dir/dlq.jsonl)."""

    def action() -> list[dict[str, str]]:
        from pipeline.bus.dead_letters import LocalDeadLetters, read_dead_letters

        settings = daemon_settings(config, state_dir, None, None, None, bootstrap)
        if local or "bootstrap" not in settings.kafka.model_fields_set:
            return [
                letter.as_json() for letter in LocalDeadLetters(settings.state_dir / "dlq.jsonl").read(limit)
            ]
        with _kafka(settings) as (bus, topics):
            return [letter.as_json() for letter in read_dead_letters(bus, topics, limit)]

    letters = run(action)
    if as_json:
        out.print_json(json.dumps(letters))
        return
    if not letters:
        out.print("the DLQ is empty")
    for letter in letters:
        where = f"{letter['original_topic']}[{letter['original_partition']}]@{letter['original_offset']}"
        out.print(
            f"[bold]{escape(letter['key'][:200])}[/] {letter['reason']} in {letter['stage']} "
            f"({escape(where)}): {escape(letter['message'])}"
        )


@dlq_app.command("replay")
def dlq_replay(
    reason: Annotated[str | None, typer.Option(help="Only entries with this reason.")] = None,
    key: Annotated[str | None, typer.Option(help="Only entries for this document key.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be replayed.")] = False,
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Re-inject dead-lettered events into their original topic after a fix (each entry once)."""

    def action() -> int:
        from pipeline.bus.dead_letters import replay_dead_letters

        settings = daemon_settings(config, None, None, None, None, bootstrap)
        with _kafka(settings) as (bus, topics):
            return replay_dead_letters(bus, topics, reason=reason, key=key, dry_run=dry_run)

    count = run(action)
    out.print(f"{'would replay' if dry_run else 'replayed'} {count} events")


# --------------------------------------------------------------------------- index versions

migrate_app = typer.Typer(
    help="Model migrations: build a new index version beside the live one, check it, switch atomically.",
    no_args_is_help=True,
)
app.add_typer(migrate_app, name="migrate")

IndexArg = Annotated[
    str | None, typer.Argument(metavar="[INDEX]", help="Index (alias) name; default: --index / index.name.")
]


def _admin_settings(
    index_arg: str | None, config: Path | None, state_dir: Path | None, index: str | None,
    bootstrap: str | None,
) -> Settings:  # fmt: skip
    """Settings of a version command; INDEX and --index must agree when both are given."""
    if index_arg and index and index_arg != index:
        raise typer.BadParameter(f"INDEX {index_arg!r} and --index {index!r} disagree", param_hint="INDEX")
    return daemon_settings(config, state_dir, index_arg or index, None, None, bootstrap)


def _on_index(
    index_arg: str | None, config: Path | None, state_dir: Path | None, index: str | None,
    bootstrap: str | None, call: Callable[[Any], T],
) -> T:  # fmt: skip
    """``call(admin)`` on the index the options name; errors become exit codes (see run)."""

    def action() -> T:
        settings = _admin_settings(index_arg, config, state_dir, index, bootstrap)
        with _admin(settings) as admin:
            return call(admin)

    return run(action)


@contextmanager
def _admin(settings: Settings, *, kafka: bool | None = None) -> Iterator[Any]:
    """The index's versions in the store; with Kafka configured (--bootstrap,
    EMBEDSTREAM_KAFKA__BOOTSTRAP or kafka.bootstrap) also its control topic and groups."""
    from pipeline.runtime.admin import Admin

    if kafka is None:
        kafka = "bootstrap" in settings.kafka.model_fields_set
    with Admin.open(settings, kafka=kafka) as admin:
        yield admin


@migrate_app.command("start")
def migrate_start(
    index_arg: IndexArg = None,
    new_model: Annotated[
        str | None,
        typer.Option("--model", metavar="MODEL", help="The new version's model (default: the live one's)."),
    ] = None,
    dims: Annotated[
        int | None, typer.Option(metavar="D", min=8, help="Matryoshka truncation (default: full or as live).")
    ] = None,
    datatype: Annotated[str | None, typer.Option(metavar="TYPE", help="float32, float16 or uint8.")] = None,
    quantization: Annotated[
        str | None, typer.Option(metavar="KIND", help="none, int8, binary or product.")
    ] = None,
    reencode: Annotated[
        bool, typer.Option("--reencode", metavar="", help="Encode again even for the live version's model.")
    ] = False,
    config: ConfigOpt = None,
    state_dir: StateOpt = None,
    index_name: IndexOpt = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Create version N+1 beside the live one; it backfills, then follows every change."""
    from pipeline.runtime.admin import StorageChoice, next_steps, start

    def begin(admin: Any) -> tuple[Any, list[str]]:
        spec = start(admin, StorageChoice(new_model, dims, datatype, quantization), reencode=reencode)
        return spec, next_steps(admin, spec)

    spec, steps = _on_index(index_arg, config, state_dir, index_name, bootstrap, begin)
    source = f" (reads the vectors of v{spec.vectors_from}: nothing to encode)" if spec.vectors_from else ""
    model = escape(spec.model or spec.fingerprint)
    out.print(
        f"[bold]created[/] {escape(spec.label)} ({escape(spec.collection)}): {model}, "
        f"{spec.dims} dims, {spec.datatype}, quantization {spec.quantization}{source}"
    )
    for step in steps:
        out.print(f"next: {escape(step)}")


@migrate_app.command("status")
def migrate_status(
    index_arg: IndexArg = None,
    evaluate: Annotated[
        bool, typer.Option("--eval/--no-eval", help="Score each version on index.eval_queries/eval_qrels.")
    ] = True,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    state_dir: StateOpt = None,
    index_name: IndexOpt = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Every version: role, documents and points, lag, and evaluation scores."""
    from pipeline.runtime.admin import states

    def rows_of(admin: Any) -> list[dict[str, Any]]:
        return [_state_row(state) for state in states(admin, evaluate=evaluate)]

    rows = _on_index(index_arg, config, state_dir, index_name, bootstrap, rows_of)
    if as_json:
        out.print_json(json.dumps(rows))
        return
    columns = ("version", "state", "model", "dims", "datatype", "quantization", "documents", "points", "lag")
    table = Table(*columns, "nDCG@10", "R@10", "pending")
    for row in rows:
        scores = row["eval"] or {}
        table.add_row(
            *(escape(_short(row, c)) for c in columns),
            f"{scores['ndcg_at_10']:.4f}" if scores else "-",
            f"{scores['recall_at_10']:.4f}" if scores else "-",
            escape(", ".join(row["pending"]) or "-"),
        )
    out.print(table)


def _state_row(state: Any) -> dict[str, Any]:
    from dataclasses import asdict

    from pipeline.runtime.admin import role

    version = state.version
    return {
        "version": version.version,
        "state": role(state.lifecycle, live=state.live, stored=True),
        "model": version.model or version.fingerprint,
        "dims": version.dims,
        "datatype": version.datatype,
        "quantization": version.quantization,
        "documents": state.documents,
        "points": state.points,
        "lag": "?" if state.lag is None else state.lag,
        "pending": list(state.pending),
        "eval": asdict(state.evaluation) if state.evaluation else None,
    }


@migrate_app.command("promote")
def migrate_promote(
    index_arg: IndexArg = None,
    version: Annotated[
        int | None, typer.Option("--version", min=1, help="Version to promote (default: newest not live).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", metavar="", help="Promote even if a gate refuses (logged).")
    ] = False,
    config: ConfigOpt = None,
    state_dir: StateOpt = None,
    index_name: IndexOpt = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Move the alias to a version that caught up, holds every document and evaluates as well."""
    from pipeline.runtime.admin import promote_version

    def promoting(admin: Any) -> Any:
        return promote_version(admin, version, force=force)

    swap = _on_index(index_arg, config, state_dir, index_name, bootstrap, promoting)
    for reason in swap.forced:
        err.print(f"[yellow]forced past:[/] {escape(reason)}")
    _print_swap(swap, "promoted")


def _print_swap(swap: Any, verb: str) -> None:
    before = swap.before.collection if swap.before else "(nothing)"
    after = swap.after
    out.print(f"[bold]{verb}[/] {escape(after.label)}: alias {after.name} {before} -> {after.collection}")


@migrate_app.command("rollback")
def migrate_rollback(
    index_arg: IndexArg = None,
    to: Annotated[
        int | None, typer.Option("--to", min=1, help="Version (default: the one live before).")
    ] = None,
    config: ConfigOpt = None,
    state_dir: StateOpt = None,
    index_name: IndexOpt = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Move the alias back to the version the live one replaced: one atomic call."""
    from pipeline.runtime.admin import rollback_version

    swap = _on_index(index_arg, config, state_dir, index_name, bootstrap, lambda a: rollback_version(a, to))
    _print_swap(swap, "rolled back to")


@migrate_app.command("gc")
def migrate_gc(
    index_arg: IndexArg = None,
    abandon: Annotated[
        list[int] | None, typer.Option("--abandon", metavar="N", help="Also drop this never-live version.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", metavar="", help="Only say what would go.")] = False,
    config: ConfigOpt = None,
    state_dir: StateOpt = None,
    index_name: IndexOpt = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Drop versions no alias points to, unaliased over index.gc_retention_hours ago."""
    from pipeline.runtime.admin import gc

    choice = _on_index(
        index_arg, config, state_dir, index_name, bootstrap, lambda a: gc(a, abandon or [], dry_run=dry_run)
    )
    verb = "would drop" if dry_run else "dropped"
    for version in choice.drop:
        out.print(f"[bold]{verb}[/] {escape(version.collection)}")
    for version, why in choice.keep:
        out.print(f"kept {escape(version.collection)}: {escape(why)}")


@app.command("index-versions")
def index_versions(
    index_arg: IndexArg = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    state_dir: StateOpt = None,
    index_name: IndexOpt = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Every version of the index: role, model, dims, datatype, quantization, chunker."""
    from pipeline.runtime.admin import list_versions

    rows = _on_index(index_arg, config, state_dir, index_name, bootstrap, list_versions)
    if as_json:
        out.print_json(json.dumps(rows))
        return
    columns = ("version", "state", "model", "dims", "datatype", "quantization", "chunking", "vectors_from")
    table = Table(*columns)
    for row in rows:
        table.add_row(*(escape(_short(row, c)) for c in columns))
    out.print(table)


def _short(row: dict[str, Any], column: str) -> str:
    """A table cell: a model directory as its last two parts (--json has the whole path)."""
    value = str(row[column])
    if column == "model" and value.startswith("/"):
        return "/".join(Path(value).parts[-2:])
    return value


@app.command("eval")
def eval_index(
    queries: Annotated[Path, typer.Option(metavar="Q.jsonl", help="BEIR queries (one {_id, text} a line).")],
    qrels: Annotated[Path, typer.Option(metavar="QRELS.tsv", help="BEIR qrels: query-id, corpus-id, score.")],
    target: Annotated[
        str | None, typer.Option("--index", metavar="NAME[@vN]", help="Index, and version (default: live).")
    ] = None,
    compare: Annotated[
        tuple[str, str] | None,
        typer.Option(metavar="vA vB", help="Two versions side by side (the first is the baseline)."),
    ] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    state_dir: StateOpt = None,
) -> None:
    """nDCG@10, MRR@10, Recall@10/@100, latency p50/p99 and bytes per vector of a version."""

    def action() -> list[Any]:
        from pipeline.runtime.admin import evaluate_versions, parse_target
        from pipeline.versions.gate import QuerySet

        name, number = parse_target(target) if target else (None, None)
        numbers = [parse_target(v)[1] for v in compare] if compare else [number]
        settings = load_settings(config, state_dir, name, None)
        with _admin(settings, kafka=False) as admin:
            return evaluate_versions(admin, numbers, QuerySet.load(queries, qrels))

    reports = run(action)
    if as_json:
        from dataclasses import asdict

        out.print_json(json.dumps([asdict(r) for r in reports]))
        return
    from pipeline.versions.evaluation import format_comparison

    out.print(escape(format_comparison(reports)))


@app.command("config")
def show_config(config: ConfigOpt = None, state_dir: StateOpt = None) -> None:
    """Print the effective configuration (flags > env > TOML > defaults), secrets masked."""
    settings = run(lambda: load_settings(config, state_dir, None, None))
    sys.stdout.write(settings.masked_json() + "\n")


@dataclass(frozen=True)
class FsOptions:
    """What the filesystem commands share: the folder and how to walk it."""

    path: Path
    name: str
    include: list[str] | None
    exclude: list[str] | None
    follow_symlinks: bool
    rebind: bool


def _fs_source(fs: FsOptions, settings: Settings, home: Path) -> Any:
    from connectors.filesystem import DEFAULT_EXCLUDE, DEFAULT_INCLUDE, FilesystemSource
    from pipeline.sources import SourceBindings

    checked_name(fs.name)
    source = FilesystemSource(
        fs.path,
        home / "checkpoints" / f"{fs.name}.json",
        name=fs.name,
        include=fs.include or DEFAULT_INCLUDE,
        exclude=[*DEFAULT_EXCLUDE, *(fs.exclude or [])],
        max_bytes=settings.limits.max_doc_bytes,
        follow_symlinks=fs.follow_symlinks,
    )
    SourceBindings.of(home).bind(source.name, source.identity, rebind=fs.rebind)
    return source


def _parse_filters(raw: list[str]) -> dict[str, str]:
    from pipeline.versions.search import parse_filter

    filters: dict[str, str] = {}
    for item in raw:
        try:
            key, value = parse_filter(item)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--filter") from exc
        if key in filters:
            raise typer.BadParameter(f"{key} is given twice (all filters must hold)", param_hint="--filter")
        filters[key] = value
    return filters


@contextmanager
def _kafka(settings: Settings) -> Iterator[tuple[Any, Any]]:
    from pipeline.bus.kafka import KafkaBus
    from pipeline.observability import NullObserver
    from pipeline.runtime import Runtime

    runtime = Runtime(settings, NullObserver())
    bus = KafkaBus(settings.kafka, client_id="embedstream-cli", max_message_bytes=runtime.message_limit)
    try:
        yield bus, runtime.topics
    finally:
        bus.close()


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[float, int | None], None] | None]:
    if not enabled or not err.is_terminal:
        yield None
        return
    columns = (
        TextColumn("indexing"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
        TextColumn("{task.fields[rate]} docs/s"), TimeElapsedColumn(), TimeRemainingColumn(),
    )  # fmt: skip
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("index", total=None, rate="-")

        def update(done: float, total: int | None) -> None:
            elapsed = bar.tasks[0].elapsed or 0.0
            rate = f"{done / elapsed:.1f}" if elapsed > 0 else "-"
            bar.update(task, completed=done, total=total, rate=rate)

        yield update


_REDONE = "the uncommitted work in flight is done again after a restart"


@contextmanager
def _stop_on_signals(stop: threading.Event, drain_timeout_s: float) -> Iterator[None]:
    """The first SIGINT/SIGTERM sets ``stop``: the pass or batch in flight finishes and is
    committed, then we exit. A second signal, or a drain longer than ``drain_timeout_s``,
    exits at once: the uncommitted batch is redelivered, so nothing is lost either way."""
    deadline: threading.Timer | None = None

    def handler(signum: int, _frame: object) -> None:
        nonlocal deadline
        name = signal.Signals(signum).name
        if stop.is_set():
            _exit_now(EXIT_INTERRUPTED, f"second {name}: exiting now; {_REDONE}")
        stop.set()
        err.print(
            f"received {name}, finishing the current pass "
            f"(at most {drain_timeout_s:g} s; send it again to exit now)…"
        )
        message = f"drain took over {drain_timeout_s:g} s: exiting now; {_REDONE}"
        deadline = threading.Timer(drain_timeout_s, _exit_now, (EXIT_DRAIN_TIMEOUT, message))
        deadline.daemon = True
        deadline.start()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        if deadline is not None:
            deadline.cancel()
        for sig, old in previous.items():
            signal.signal(sig, old)


def _exit_now(code: int, message: str) -> NoReturn:
    """Leave without unwinding: the thread doing the work may be stuck in a call that
    never returns. Nothing uncommitted is lost (at-least-once redelivery)."""
    log.error(message)
    err.print(f"[red]{message}[/]")
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    os._exit(code)


def main() -> None:  # the console script
    # Models are never downloaded at run time: make any accidental hub access fail fast.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if crash_at := os.environ.get("EMBEDSTREAM_CRASH_AT"):  # fault-injection tests only
        from pipeline.core import faults

        faults.arm(crash_at)
    command()(prog_name="embedstream")


if __name__ == "__main__":
    main()
