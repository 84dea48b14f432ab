"""The connectors' command-line options, declared once for the commands that take them.

``embedstream index`` and ``watch`` (embedded), ``embedstream source fs|sql|debezium`` (Kafka
daemons) and ``verify`` list these; :mod:`pipeline.cli.sources` builds the sources from their
values. :func:`follows` gives a command the options of a folder it follows as one value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.cli.options import Command, RescanOpt, expand, parameter
from pipeline.cli.sources import FsOptions

_SQL = "SQL table (instead of PATH)"
_ROWS = "Rows as documents (SQL, Debezium)"
_JSONL = "JSON lines (instead of PATH)"

ConnectorNameOpt = Annotated[
    str | None,
    typer.Option(
        "--source",
        metavar="NAME",
        help="Source name: document keys are NAME/id; one name stands for one folder, table or "
        "stream per index. Default: fs, the table's name, or jsonl.",
    ),
]
#: The folder a filesystem command follows (watch, source fs).
FolderArg = Annotated[Path, typer.Argument(help="Directory of documents.", exists=True, file_okay=False)]
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
FollowLinksOpt = Annotated[
    bool,
    typer.Option(
        "--follow-symlinks", metavar="", help="Also index files whose symlinks point outside the folder."
    ),
]
SqlUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--sql-url",
        metavar="URL",
        envvar="EMBEDSTREAM_SQL_URL",
        help="Index a database table instead of PATH: a SQLAlchemy URL "
        "(postgresql+psycopg://user@host/db, sqlite:///file.db).",
        rich_help_panel=_SQL,
    ),
]
DaemonSqlUrlOpt = Annotated[
    str,
    typer.Option(
        "--url",
        metavar="URL",
        envvar="EMBEDSTREAM_SQL_URL",
        help="SQLAlchemy URL (postgresql+psycopg://user@host/db, sqlite:///file.db).",
    ),
]
TableOpt = Annotated[
    str | None,
    typer.Option("--table", metavar="NAME", help="Table (schema.name allowed).", rich_help_panel=_SQL),
]
QueryOpt = Annotated[
    str | None,
    typer.Option("--query", metavar="SQL", help="A SELECT to read instead of a table.", rich_help_panel=_SQL),
]
KeyColumnOpt = Annotated[
    str,
    typer.Option(
        "--key", metavar="COLUMN", help="Column that identifies a row: the document id.", rich_help_panel=_SQL
    ),
]
CursorOpt = Annotated[
    str | None,
    typer.Option(
        "--version",
        metavar="COLUMN",
        help="Cursor column: updated_at (a timestamp) or a monotonic id. Required with --sql-url.",
        rich_help_panel=_SQL,
    ),
]
LookbackOpt = Annotated[
    float,
    typer.Option(
        "--lookback",
        metavar="N",
        min=0,
        help="Also re-read rows whose cursor is within N of the highest one seen (seconds for "
        "timestamps, units for ids), to catch rows committed late with an older cursor.",
        rich_help_panel=_SQL,
    ),
]
KeyDiffOpt = Annotated[
    float | None,
    typer.Option(
        "--key-diff-every",
        metavar="SECONDS",
        min=0,
        help="Compare the table's keys with what is indexed this often, to find hard deletes "
        "(0: every pass). Default: every run for index, 300 for the daemon.",
        rich_help_panel=_SQL,
    ),
]
TextOpt = Annotated[
    str | None,
    typer.Option(
        "--text",
        metavar="TEMPLATE",
        help=r"Document text over columns, e.g. '{title}\n\n{body}' (\n is a newline, NULL is empty).",
        rich_help_panel=_ROWS,
    ),
]
MetadataOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--metadata",
        metavar="COLUMN",
        help="Columns copied into each point's metadata (repeatable or comma-separated).",
        rich_help_panel=_ROWS,
    ),
]
DeletedColumnOpt = Annotated[
    str | None,
    typer.Option(
        "--deleted-column",
        metavar="COLUMN",
        help="Soft-delete column: true, non-zero or a timestamp means the row is deleted.",
        rich_help_panel=_ROWS,
    ),
]
UnavailableValueOpt = Annotated[
    str,
    typer.Option(
        "--unavailable-value",
        metavar="TEXT",
        help="Debezium's unavailable.value.placeholder (a TOASTed column an UPDATE did not carry); "
        "it never becomes document text.",
    ),
]
JsonlOpt = Annotated[
    Path | None,
    typer.Option(
        "--jsonl",
        metavar="FILE",
        help="Index change events from a JSON lines file ('-': stdin) instead of PATH.",
        rich_help_panel=_JSONL,
    ),
]


@dataclass(frozen=True)
class Followed:
    """A folder a command follows, and the pause between two passes over it."""

    fs: FsOptions
    interval: float


def follows(every: float) -> Callable[[Command], Command]:
    """Declare the command's ``folder: Followed`` parameter, in its place, as PATH, --interval
    (default ``every`` seconds), --source, --include, --exclude and --rebind (--follow-symlinks
    stays the command's own: watch lists it after --allow-mass-delete)."""
    declared = [
        parameter("path", FolderArg),
        parameter("interval", RescanOpt, every),
        parameter("source", SourceNameOpt, "fs"),
        parameter("include", IncludeOpt, None),
        parameter("exclude", ExcludeOpt, None),
        parameter("rebind", RebindOpt, False),
    ]
    return lambda command: expand(command, "folder", declared, _followed)


def _followed(given: dict[str, Any]) -> Followed:
    fs = FsOptions(given["path"], given["source"], given["include"], given["exclude"], rebind=given["rebind"])
    return Followed(fs, given["interval"])
