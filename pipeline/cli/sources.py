"""The connectors on the command line: their options, and building a source from them.

``embedstream index`` and ``watch`` (embedded) and ``embedstream source fs|sql|debezium``
(Kafka daemons) share these. Each builder makes the source, checks its name and binds the
name to the source's identity (:class:`pipeline.sources.SourceBindings`), so one name never
stands for two folders or tables. The SQL connector (SQLAlchemy) is imported only when used.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from connectors.debezium import UNAVAILABLE_VALUE, DebeziumSource, DebeziumTopics
from connectors.filesystem import DEFAULT_EXCLUDE, DEFAULT_INCLUDE, FilesystemSource
from connectors.jsonl import STDIN, JsonlSource
from connectors.kit.rejects import KafkaRejects, LocalRejects
from connectors.kit.rows import RowFormat, unescape
from pipeline.bus import Bus
from pipeline.bus.dead_letters import LocalDeadLetters
from pipeline.cli.source_checks import check_sql_url, checked_name, hidden, sqlite_mistake, state_dir_inside
from pipeline.config.settings import Settings
from pipeline.core.errors import ConfigError, RetryableError
from pipeline.core.names import Topics
from pipeline.sources import SourceBindings

if TYPE_CHECKING:
    from connectors.sql import SqlSource


def _name_from(dotted: str) -> str:
    """A default source name from a table or topic: ``public.articles`` -> ``articles``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", dotted.rpartition(".")[2])


@dataclass(frozen=True)
class RowOptions:
    """How rows become documents: shared by the SQL and Debezium connectors."""

    text: str | None
    metadata: list[str] | None = None
    deleted_column: str | None = None

    def row_format(self, flag: str) -> RowFormat:
        if not self.text:
            raise ConfigError(
                f"--text is required with {flag}: the document text, e.g. '{{title}}\\n\\n{{body}}'"
            )
        columns = tuple(c.strip() for item in self.metadata or [] for c in item.split(",") if c.strip())
        return RowFormat(unescape(self.text), columns, self.deleted_column)


@dataclass(frozen=True)
class FsOptions:
    """What the filesystem commands share: the folder and how to walk it."""

    path: Path
    name: str
    include: list[str] | None = None
    exclude: list[str] | None = None
    rebind: bool = False
    follow_symlinks: bool = False


def fs_source(options: FsOptions, settings: Settings, home: Path) -> FilesystemSource:
    """The folder as a source whose checkpoint and name binding live under ``home``."""
    checked_name(options.name)
    source = FilesystemSource(
        options.path,
        home / "checkpoints" / f"{options.name}.json",
        name=options.name,
        include=options.include or DEFAULT_INCLUDE,
        exclude=[*DEFAULT_EXCLUDE, *(options.exclude or []), *state_dir_inside(options.path, settings)],
        max_bytes=settings.limits.max_doc_bytes,
        follow_symlinks=options.follow_symlinks,
    )
    SourceBindings.of(home).bind(source.name, source.identity, rebind=options.rebind)
    return source


@dataclass(frozen=True)
class SqlOptions:
    url: str
    table: str | None
    query: str | None
    key: str
    version: str | None
    rows: RowOptions
    lookback: float = 60.0
    key_diff_every: float | None = 0.0
    name: str | None = None
    rebind: bool = False

    @property
    def source_name(self) -> str:
        """The given name, else the table's own (``public.articles`` -> ``articles``)."""
        if self.name:
            return checked_name(self.name)
        return _name_from(self.table) if self.table else "sql"


def sql_source(options: SqlOptions, settings: Settings, home: Path) -> SqlSource:
    """The table as a source whose checkpoint and name binding live under ``home``."""
    from connectors.sql import SqlSource, SqlTable

    if not options.version:
        raise ConfigError("--version is required: the cursor column (updated_at, or a monotonic id)")
    check_sql_url(options.url)
    config = SqlTable(
        url=options.url, key=options.key, version=options.version, rows=options.rows.row_format("--sql-url"),
        table=options.table, query=options.query, lookback=options.lookback,
        key_diff_every_s=options.key_diff_every,
    )  # fmt: skip
    name = options.source_name
    try:
        checkpoint = home / "checkpoints" / f"{name}.sqlite"
        source = SqlSource(config, checkpoint, name=name, max_bytes=settings.limits.max_doc_bytes)
    except ValueError as exc:  # SQLAlchemy's URL parser: a port that is not a number, ...
        raise ConfigError(f"--sql-url {hidden(options.url)}: {exc} (is the port a number?)") from exc
    try:
        _ = source.relation  # columns checked now, not at the first row
        SourceBindings.of(home).bind(name, source.identity, rebind=options.rebind)
    except RetryableError as exc:
        source.close()
        if mistake := sqlite_mistake(options.url, options.query, exc):
            raise mistake from exc
        raise
    except BaseException:
        source.close()
        raise
    return source


def jsonl_source(path: Path, name: str | None, settings: Settings, home: Path) -> JsonlSource:
    """A JSON lines file or stdin; bad lines go to the local dead-letter log."""
    name = checked_name(name or "jsonl")
    from_stdin = str(path) == STDIN
    if not from_stdin and not path.is_file():
        raise ConfigError(f"--jsonl {path}: no such file")
    source = JsonlSource(
        STDIN if from_stdin else path,
        home / "checkpoints" / f"{name}.sqlite",
        name=name,
        rejects=LocalRejects(LocalDeadLetters(settings.state_dir / "dlq.jsonl")),
        stdin=sys.stdin.buffer if from_stdin else None,
    )
    SourceBindings.of(home).bind(name, source.identity)
    return source


@dataclass(frozen=True)
class DebeziumOptions:
    topics: list[str]
    group: str | None
    key: str | None
    rows: RowOptions
    name: str | None = None
    unavailable_value: str = UNAVAILABLE_VALUE


def debezium_source(options: DebeziumOptions, settings: Settings, bus: Bus, home: Path) -> DebeziumSource:
    """Debezium topics on the pipeline's Kafka cluster; bad records go to ``<prefix>.dlq``; the
    per-key checkpoint (versions, tombstones, column digests) lives under ``home``."""
    if not options.topics:
        raise ConfigError("--topic is required: a Debezium change topic, e.g. dbserver1.public.articles")
    name = checked_name(options.name or _name_from(options.topics[0]))
    topics = Topics(settings.kafka.topic_prefix)
    group = options.group or topics.source_group("debezium", name)
    config = DebeziumTopics(
        tuple(options.topics),
        group,
        options.rows.row_format("--topic"),
        options.key,
        options.unavailable_value,
    )
    rejects = KafkaRejects(bus.producer(), topics.dlq)
    source = DebeziumSource(
        bus, config, home / "checkpoints" / f"{name}.sqlite", name=name, rejects=rejects,
        max_bytes=settings.limits.max_doc_bytes,
    )  # fmt: skip
    try:
        SourceBindings.of(home).bind(name, source.identity)
    except BaseException:
        source.close()
        raise
    return source
