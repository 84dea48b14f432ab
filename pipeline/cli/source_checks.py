"""Checks of what a source option names, before the connector sees it: a source name must
be usable in a document key, the state dir must
not be indexed as documents, a SQLite file must exist, and SQLite's mistakes are not outages.

SQLAlchemy is not imported here (only ``connectors/sql.py`` talks to databases): SQLite URLs
are read with a pattern.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.config.settings import Settings
from pipeline.core.errors import ConfigError, RetryableError

SOURCE_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")


def checked_name(name: str) -> str:
    if not SOURCE_NAME.fullmatch(name):
        raise ConfigError(
            f"--source {name!r}: use letters, digits, '.', '_' or '-' (it is half of every document key)"
        )
    return name


def state_dir_inside(folder: Path, settings: Settings) -> list[str]:
    """An exclude glob for the state dir when it lies inside ``folder``: the store, cache and
    checkpoints are never documents (else every pass re-encodes the files it just wrote)."""
    try:
        inside = settings.state_dir.resolve().relative_to(folder.resolve())
    except ValueError:
        return []
    if not inside.parts:
        return ["**"]  # the folder is the state dir itself: nothing in it is a document
    literal = re.sub(r"([*?\[])", r"[\1]", inside.as_posix())  # the path as a glob matching only itself
    return [f"/{literal}/**"]


# sqlite:///relative.db, sqlite:////absolute.db, sqlite+pysqlite:///..., with ?options
_SQLITE_FILE = re.compile(r"sqlite(?:\+\w+)?:///([^?]+)(?:\?.*)?")


def check_sql_url(url: str) -> None:
    """A SQLite file that does not exist is a typo: say so (SQLite would create it)."""
    found = _SQLITE_FILE.fullmatch(url)
    database = found.group(1) if found else ""
    in_memory = database in ("", ":memory:") or database.startswith("file:")
    if not in_memory and not Path(database).is_file():
        raise ConfigError(f"--sql-url {url}: no such SQLite file {database}")


def hidden(url: str) -> str:
    """The URL without its password, if it has one."""
    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)


def sqlite_mistake(url: str, query: str | None, exc: RetryableError) -> ConfigError | None:
    """SQLite reports a syntax error or an unreadable file as an OperationalError, which the
    connector takes for an outage (retry); in a local file it is a mistake in the command.
    None: a real outage (a locked file, or another database)."""
    message = str(exc)
    if not url.startswith("sqlite") or "locked" in message:
        return None
    if query:
        message = message.replace("the table's columns", "the query's columns")
    return ConfigError(message)
