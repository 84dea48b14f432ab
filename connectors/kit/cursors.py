"""Cursor and key values of a SQL table: as versions, as checkpoint text, and a look-back earlier.

Pure functions of the values a database driver returns (no SQLAlchemy): the SQL connector's
checkpoint keeps its snapshot key and cursor with them.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal

from pipeline.core.errors import ConfigError

__all__ = ["decode_value", "encode_value", "minus_lookback", "natural_version"]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def natural_version(value: object) -> int:
    """A cursor value as a version: integers as they are, timestamps in microseconds since
    1970 (naive ones taken as UTC), ISO 8601 text parsed; NULL is 0 (the oldest)."""
    if value is None:
        return 0
    if isinstance(value, bool):
        raise ConfigError("the version column is boolean; use an integer or timestamp column")
    if isinstance(value, int):
        return max(0, value)
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return max(0, int(value))
    if isinstance(value, str):
        value = _parse_timestamp(value)
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    if isinstance(value, dt.datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
        return max(0, (aware - _EPOCH) // dt.timedelta(microseconds=1))
    raise ConfigError(f"the version column holds {type(value).__name__}; use an integer or timestamp column")


def _parse_timestamp(text: str) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"the version column holds {text!r}, not an ISO 8601 timestamp") from None


def minus_lookback(cursor: object, lookback: float) -> object:
    """The cursor value ``lookback`` earlier, in the column's own type."""
    if isinstance(cursor, bool):
        return cursor
    if isinstance(cursor, (int, Decimal)):
        return cursor - int(lookback)
    if isinstance(cursor, dt.datetime):
        return cursor - dt.timedelta(seconds=lookback)
    if isinstance(cursor, dt.date):
        return cursor - dt.timedelta(days=int(lookback // 86400) + 1)
    if isinstance(cursor, str):
        earlier = _parse_timestamp(cursor) - dt.timedelta(seconds=lookback)
        return earlier.isoformat(sep="T" if "T" in cursor else " ")
    return cursor


_TAGS: dict[str, type] = {"int": int, "str": str, "datetime": dt.datetime, "date": dt.date}


def encode_value(value: object) -> str:
    """A key or cursor value as checkpoint text that decodes to the same Python type."""
    if isinstance(value, bool) or value is None:
        raise ConfigError(f"a key or cursor value of {value!r} cannot be ordered")
    if isinstance(value, dt.datetime):
        return json.dumps({"datetime": value.isoformat()})
    if isinstance(value, dt.date):
        return json.dumps({"date": value.isoformat()})
    if isinstance(value, Decimal):
        return json.dumps({"decimal": str(value)})
    if isinstance(value, uuid.UUID):
        return json.dumps({"uuid": str(value)})
    if isinstance(value, (int, str)):
        return json.dumps({type(value).__name__: value})
    raise ConfigError(f"a key or cursor of type {type(value).__name__} is not supported")


def decode_value(text: str | None) -> object:
    if text is None:
        return None
    ((tag, raw),) = json.loads(text).items()
    if tag == "datetime":
        return dt.datetime.fromisoformat(raw)
    if tag == "date":
        return dt.date.fromisoformat(raw)
    if tag == "decimal":
        return Decimal(raw)
    if tag == "uuid":
        return uuid.UUID(raw)
    return _TAGS[tag](raw)
