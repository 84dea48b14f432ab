"""The Kafka mode's commands: ``topics create``, the source daemons (``source fs|sql|debezium``)
and the workers (``embed``, ``sink``). Each daemon runs until SIGTERM/SIGINT and drains first."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import replace
from typing import Annotated, Literal

import typer

from connectors.debezium import UNAVAILABLE_VALUE
from pipeline.bus import Bus
from pipeline.cli import source_options, sources
from pipeline.cli.app import app, load_settings, run, source_app, topics_app
from pipeline.cli.options import (
    CommonOptions,
    positive_seconds,
    takes,
)
from pipeline.cli.render import print_topics
from pipeline.cli.signals import stop_on_signals
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
@takes("config", "index", "bootstrap")
def topics_create(
    common: CommonOptions,
    version: VersionOpt = 1,
) -> None:
    """Create <prefix>.changes, <prefix>.vectors.<index>-v<N> (compacted) and <prefix>.dlq."""

    def action() -> None:
        from pipeline.runtime.topology import Topology

        settings = load_settings(common)
        specs = Topology(settings).topic_specs(version)
        with kafka(settings) as (bus, _topics):
            bus.ensure_topics(specs)
        print_topics(specs)

    run(action)


@source_app.command("fs")
@takes("config", "state_dir", "http", "bootstrap")
@source_options.follows(every=2.0)
def source_fs(
    common: CommonOptions,
    folder: source_options.Followed,
    follow_symlinks: source_options.FollowLinksOpt = False,
) -> None:
    """Publish PATH's new, changed and deleted files to <prefix>.changes, forever."""
    settings = run(lambda: load_settings(common))
    fs = replace(folder.fs, follow_symlinks=follow_symlinks)
    src = run(lambda: sources.fs_source(fs, settings, settings.state_dir / "sources"))
    _publish(settings, src, folder.interval)


@source_app.command("sql")
@takes("config", "state_dir", "http", "bootstrap")
def source_sql(
    common: CommonOptions,
    url: source_options.DaemonSqlUrlOpt,
    table: source_options.TableOpt = None,
    query: source_options.QueryOpt = None,
    key: source_options.KeyColumnOpt = "id",
    version: source_options.CursorOpt = None,
    text: source_options.TextOpt = None,
    metadata: source_options.MetadataOpt = None,
    deleted_column: source_options.DeletedColumnOpt = None,
    lookback: source_options.LookbackOpt = 60.0,
    key_diff_every: source_options.KeyDiffOpt = 300.0,
    interval: Annotated[
        float, typer.Option(metavar="SECONDS", help="Seconds between polls.", callback=positive_seconds)
    ] = 2.0,
    source: source_options.ConnectorNameOpt = None,
    rebind: source_options.RebindOpt = False,
) -> None:
    """Publish a table's new, changed and deleted rows to <prefix>.changes, forever."""
    settings = run(lambda: load_settings(common))
    rows = sources.RowOptions(text, metadata, deleted_column)
    sql = sources.SqlOptions(url, table, query, key, version, rows, lookback, key_diff_every, source, rebind)
    with closing(run(lambda: sources.sql_source(sql, settings, settings.state_dir / "sources"))) as src:
        _publish(settings, src, interval)


@source_app.command("debezium")
@takes("config", "state_dir", "http", "bootstrap")
def source_debezium(
    common: CommonOptions,
    topic: Annotated[
        list[str], typer.Option("--topic", metavar="TOPIC", help="Debezium change topic (repeatable).")
    ],
    text: source_options.TextOpt = None,
    key: Annotated[
        str | None,
        typer.Option(
            "--key", metavar="COLUMN", help="The primary key column (default: the record key, which is it)."
        ),
    ] = None,
    metadata: source_options.MetadataOpt = None,
    deleted_column: source_options.DeletedColumnOpt = None,
    group: Annotated[
        str | None, typer.Option(metavar="GROUP", help="Consumer group (default <prefix>.debezium.NAME).")
    ] = None,
    interval: Annotated[float, typer.Option(metavar="SECONDS", help="Pause between passes.")] = 0.0,
    source: source_options.ConnectorNameOpt = None,
    unavailable_value: source_options.UnavailableValueOpt = UNAVAILABLE_VALUE,
) -> None:
    """Turn Debezium change topics into change events on <prefix>.changes, forever; offsets
    move only once the changes are published."""
    settings = run(lambda: load_settings(common))
    rows = sources.RowOptions(text, metadata, deleted_column)
    options = sources.DebeziumOptions(topic, group, key, rows, source, unavailable_value)
    with kafka(settings) as (bus, _topics):
        src = run(lambda: sources.debezium_source(options, settings, bus, settings.state_dir / "sources"))
        with closing(src):
            _publish(settings, src, interval)


@app.command()
@takes("config", "state_dir", "index", "model", "http", "bootstrap")
def embed(
    common: CommonOptions,
    version: VersionOpt = 1,
) -> None:
    """Embedding worker: changes -> vectors. Run one per GPU; they share partitions in a group."""
    _worker("embed", version, common)


@app.command()
@takes("config", "state_dir", "index", "http", "bootstrap")
def sink(
    common: CommonOptions,
    version: VersionOpt = 1,
) -> None:
    """Sink worker: vectors -> Qdrant (server via store.url, else the embedded engine, one owner)."""
    _worker("sink", version, common)


def _worker(stage: Literal["embed", "sink"], version: int, common: CommonOptions) -> None:
    """A consuming daemon of index version ``version``: the embed or the sink stage."""
    from pipeline.runtime.daemons import run_embed, run_sink

    work = run_embed if stage == "embed" else run_sink
    settings = run(lambda: load_settings(common))
    run_daemon(settings, lambda stop: work(settings, version, stop))
