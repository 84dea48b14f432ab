"""Rows as documents: the text template, metadata columns and soft-delete flag.

The SQL and Debezium connectors share this, so one table indexed either way (polled, or
through its change stream) gives the same documents: the same text, the same metadata.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

from pydantic import JsonValue

from pipeline.core.errors import ConfigError
from pipeline.core.hashing import normalize_text
from pipeline.sources import PassReport

__all__ = ["RowError", "RowFormat", "is_deleted", "json_value", "unescape"]

_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_ESCAPED = {"n": "\n", "t": "\t", "\\": "\\"}
#: Soft-delete values that mean "not deleted" (any other non-empty value means deleted,
#: so both ``is_deleted boolean`` and ``deleted_at timestamp`` columns work).
_FALSE_WORDS = frozenset({"", "0", "false", "f", "no", "n", "off"})


class RowError(ValueError):
    """This row cannot become a document (its text does not render); ``reason`` says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def unescape(template: str) -> str:
    r"""``'{title}\n\n{body}'`` typed in a shell holds a backslash and an ``n``: it means a newline."""
    return _ESCAPE.sub(lambda m: _ESCAPED.get(m.group(1), m.group(0)), template)


@dataclass(frozen=True)
class RowFormat:
    """How a row becomes a document: ``template`` over columns (``{title}\n\n{body}``),
    ``metadata`` columns copied into the payload, an optional soft-delete column."""

    template: str
    metadata: tuple[str, ...] = ()
    deleted_column: str | None = None

    def __post_init__(self) -> None:
        if not self.fields:
            msg = f"--text {self.template!r} names no column; write e.g. '{{title}}\\n\\n{{body}}'"
            raise ConfigError(msg)

    @property
    def fields(self) -> tuple[str, ...]:
        """Columns the template reads, in order of first use."""
        names: list[str] = []
        try:
            parsed = list(string.Formatter().parse(self.template))
        except ValueError as exc:
            raise ConfigError(f"--text {self.template!r}: {exc}") from exc
        for _literal, name, _spec, _conversion in parsed:
            if name is None:
                continue
            if not name or name.isdigit() or any(c in name for c in ".["):
                msg = f"--text {self.template!r}: {{{name}}} is not a column name; use {{column}}"
                raise ConfigError(msg)
            if name not in names:
                names.append(name)
        return tuple(names)

    def columns(self) -> tuple[str, ...]:
        """Every column a document needs besides its key and version."""
        wanted = [*self.fields, *self.metadata, *([self.deleted_column] if self.deleted_column else [])]
        return tuple(dict.fromkeys(wanted))

    def text(self, row: Mapping[str, object]) -> str:
        """The normalized document text; NULL columns render as nothing."""
        cells = {name: "" if (v := _cell(row, name)) is None else v for name in self.fields}
        try:
            return normalize_text(self.template.format_map(cells))
        except (ValueError, TypeError) as exc:  # a format spec that does not fit the value
            raise RowError("template_error", f"--text {self.template!r}: {exc}") from exc

    def metadata_of(self, row: Mapping[str, object]) -> dict[str, JsonValue]:
        return {name: json_value(_cell(row, name)) for name in self.metadata}

    def document(
        self, row: Mapping[str, object], max_bytes: int, report: PassReport, what: str
    ) -> tuple[str, dict[str, JsonValue]] | None:
        """The row's text and metadata, or None when it is no document now: soft-deleted, or
        unindexable (reported under ``what``), so it loses its points."""
        try:
            if self.is_deleted(row):
                return None
            text, metadata = self.text(row), self.metadata_of(row)
        except RowError as exc:
            report.skip(exc.reason, what, str(exc))
            return None
        if not text or len(text.encode("utf-8")) > max_bytes:
            report.skip("empty" if not text else "too_large", what)
            return None
        return text, metadata

    def is_deleted(self, row: Mapping[str, object]) -> bool:
        return self.deleted_column is not None and is_deleted(_cell(row, self.deleted_column))

    def check_columns(self, available: Sequence[str], where: str, also: Sequence[str] = ()) -> None:
        """Fail at start-up, naming what is missing (of ``also`` and the columns read), rather
        than on every row."""
        missing = [c for c in dict.fromkeys((*also, *self.columns())) if c not in available]
        if missing:
            msg = f"{where} has no column {', '.join(map(repr, missing))}; it has {', '.join(available)}"
            raise ConfigError(msg)


def _cell(row: Mapping[str, object], name: str) -> object:
    try:
        value = row[name]
    except KeyError:
        raise RowError("missing_column", f"the row has no column {name!r}") from None
    return value


def is_deleted(value: object) -> bool:
    """A soft-delete cell: true, non-zero, a timestamp or any word but no/false/0 means deleted."""
    if value is None or value == "":
        return False
    if isinstance(value, str):
        return value.strip().lower() not in _FALSE_WORDS
    return bool(value) if isinstance(value, (bool, int, float, Decimal)) else True


def json_value(value: object) -> JsonValue:
    """A database value as JSON for the payload: timestamps in ISO 8601, decimals as
    numbers, UUIDs as text; NaN and other values JSON cannot hold become text."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, (float, Decimal)):
        return _number(value)
    if isinstance(value, Mapping):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    return bytes(value).hex() if isinstance(value, (bytes, bytearray, memoryview)) else str(value)


def _number(value: float | Decimal) -> JsonValue:
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if not value.is_finite():
        return str(value)
    return int(value) if value == value.to_integral_value() else float(value)
