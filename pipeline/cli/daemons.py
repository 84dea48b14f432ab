"""The Kafka mode's commands: ``topics create``, the source daemons (``source fs|sql|debezium``)
and the workers (``embed``, ``sink``). Each daemon runs until SIGTERM/SIGINT and drains first."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Annotated, Literal

import typer

from connectors.debezium import UNAVAILABLE_VALUE
from pipeline.bus import Bus
from pipeline.cli.app import app, load_settings, run, source_app, topics_app
from pipeline.cli.options import (
    BootstrapOpt,
    CommonOptions,
    ConfigOpt,
    HttpOpt,
    IndexOpt,
    ModelOpt,
    RescanOpt,
    StateOpt,
    positive_seconds,
)
from pipeline.cli.render import print_topics
from pipeline.cli.signals import stop_on_signals
from pipeline.cli.sources import (
    ConnectorNameOpt,
    CursorOpt,
    DaemonSqlUrlOpt,
    DebeziumOptions,
    DeletedColumnOpt,
    ExcludeOpt,
    FollowLinksOpt,
    FsOptions,
    IncludeOpt,
    KeyColumnOpt,
    KeyDiffOpt,
    LookbackOpt,
    MetadataOpt,
    QueryOpt,
    RebindOpt,
    RowOptions,
    SourceNameOpt,
    SqlOptions,
    TableOpt,
    TextOpt,
    UnavailableValueOpt,
    debezium_source,
    fs_source,
    sql_source,
)
from pipeline.config.settings import Settings
from pipeline.core.names import Topics
from pipeline.sources import Source

VersionOpt = Annotated[int, typer.Option("--version", help="Index version N (collection NAME__vN).", min=1)]


@contextmanager
def kafka(settings: Settings) -> Iterator[tuple[Bus, Topics]]:
    """The CLI's own Kafka client, and the deployment's topic names."""
    from pipeline.runtime.adapters import kafka_bus
    from pipeline.runtime.topology import Topology

    bus = kafka_bus(settings, "embedstream-cli")
    try:
        yield bus, Topology(settings).topics
    finally:
        bus.close()


def run_daemon(settings: Settings, body: Callable[[threading.Event], None]) -> None:
    """Run a daemon until SIGTERM/SIGINT; the batch in flight finishes and is committed."""
    stop = threading.Event()

    def action() -> None:
        with stop_on_signals(stop, settings.drain_timeout_s):
            body(stop)

    run(action)


def _publish(settings: Settings, src: Source, interval: float) -> None:
    """A source daemon: ``src``'s changes to <prefix>.changes, a pass every ``interval``."""
    from pipeline.runtime.daemons import run_source

    run_daemon(settings, lambda stop: run_source(settings, src, stop, interval))


@topics_app.command("create")
def topics_create(
    version: VersionOpt = 1,
    config: ConfigOpt = None,
    index_name: IndexOpt = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Create <prefix>.changes, <prefix>.vectors.<index>-v<N> (compacted) and <prefix>.dlq."""

    def action() -> None:
        from pipeline.runtime.topology import Topology

        settings = load_settings(CommonOptions(config=config, index=index_name, bootstrap=bootstrap))
        specs = Topology(settings).topic_specs(version)
        with kafka(settings) as (bus, _topics):
            bus.ensure_topics(specs)
        print_topics(specs)

    run(action)


@source_app.command("fs")
def source_fs(
    path: Annotated[Path, typer.Argument(help="Directory of documents.", exists=True, file_okay=False)],
    interval: RescanOpt = 2.0,
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
    common = CommonOptions(config=config, state_dir=state_dir, http=http, bootstrap=bootstrap)
    settings = run(lambda: load_settings(common))
    fs = FsOptions(path, source, include, exclude, follow_symlinks, rebind)
    src = run(lambda: fs_source(fs, settings, settings.state_dir / "sources"))
    _publish(settings, src, interval)


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
    interval: Annotated[
        float, typer.Option(metavar="SECONDS", help="Seconds between polls.", callback=positive_seconds)
    ] = 2.0,
    source: ConnectorNameOpt = None,
    rebind: RebindOpt = False,
    config: ConfigOpt = None,
    state_dir: StateOpt = None,
    http: HttpOpt = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Publish a table's new, changed and deleted rows to <prefix>.changes, forever."""
    common = CommonOptions(config=config, state_dir=state_dir, http=http, bootstrap=bootstrap)
    settings = run(lambda: load_settings(common))
    rows = RowOptions(text, metadata, deleted_column)
    sql = SqlOptions(url, table, query, key, version, rows, lookback, key_diff_every, source, rebind)
    with closing(run(lambda: sql_source(sql, settings, settings.state_dir / "sources"))) as src:
        _publish(settings, src, interval)


@source_app.command("debezium")
def source_debezium(
    topic: Annotated[
        list[str], typer.Option("--topic", metavar="TOPIC", help="Debezium change topic (repeatable).")
    ],
    text: TextOpt = None,
    key: Annotated[
        str | None,
        typer.Option(
            "--key", metavar="COLUMN", help="The primary key column (default: the record key, which is it)."
        ),
    ] = None,
    metadata: MetadataOpt = None,
    deleted_column: DeletedColumnOpt = None,
    group: Annotated[
        str | None, typer.Option(metavar="GROUP", help="Consumer group (default <prefix>.debezium.NAME).")
    ] = None,
    interval: Annotated[float, typer.Option(metavar="SECONDS", help="Pause between passes.")] = 0.0,
    source: ConnectorNameOpt = None,
    unavailable_value: UnavailableValueOpt = UNAVAILABLE_VALUE,
    config: ConfigOpt = None,
    state_dir: StateOpt = None,
    http: HttpOpt = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Turn Debezium change topics into change events on <prefix>.changes, forever; offsets
    move only once the changes are published."""
    common = CommonOptions(config=config, state_dir=state_dir, http=http, bootstrap=bootstrap)
    settings = run(lambda: load_settings(common))
    rows = RowOptions(text, metadata, deleted_column)
    options = DebeziumOptions(topic, group, key, rows, source, unavailable_value)
    with kafka(settings) as (bus, _topics):
        src = run(lambda: debezium_source(options, settings, bus, settings.state_dir / "sources"))
        with closing(src):
            _publish(settings, src, interval)


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
    common = CommonOptions(
        config=config, state_dir=state_dir, index=index_name, model=model, http=http, bootstrap=bootstrap
    )
    _worker("embed", version, common)


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
    common = CommonOptions(
        config=config, state_dir=state_dir, index=index_name, http=http, bootstrap=bootstrap
    )
    _worker("sink", version, common)


def _worker(stage: Literal["embed", "sink"], version: int, common: CommonOptions) -> None:
    """A consuming daemon of index version ``version``: the embed or the sink stage."""
    from pipeline.runtime.daemons import run_embed, run_sink

    work = run_embed if stage == "embed" else run_sink
    settings = run(lambda: load_settings(common))
    run_daemon(settings, lambda stop: work(settings, version, stop))
