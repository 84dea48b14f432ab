"""Unit tests for the SQL connector's pure parts: rows as documents, versions, cursors, checkpoint."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from connectors.kit.keystates import Checkpointed, Documents, KeyState, KeyStates
from connectors.kit.rows import RowError, RowFormat, is_deleted, json_value, unescape
from connectors.sql import SqlTable, decode_value, encode_value, minus_lookback, natural_version
from pipeline.core.errors import ConfigError

ROWS = RowFormat("{title}\n\n{body}", ("author", "published"), "deleted")


def test_shell_escapes_in_a_template_become_newlines():
    r"""'{title}\n\n{body}' typed in a shell (a backslash and an n) means two newlines."""
    assert unescape(r"{title}\n\n{body}\t\\n") == "{title}\n\n{body}\t\\n"


def test_a_row_renders_its_template_with_null_as_nothing():
    """NULL columns render as nothing and the text is normalized (no trailing blank lines)."""
    assert ROWS.text({"title": "Pairing", "body": None}) == "Pairing"
    assert ROWS.text({"title": "Pairing", "body": "Hold the button.\r\n"}) == "Pairing\n\nHold the button."


def test_template_problems_are_configuration_errors():
    """A template naming no column, a positional field or an attribute path fails at start-up."""
    for template in ("no columns here", "{0}", "{row.title}", "{title"):
        with pytest.raises(ConfigError):
            _ = RowFormat(template).fields


def test_missing_columns_are_named_at_start_up():
    """Columns the template, metadata or soft-delete flag need are checked against the relation."""
    with pytest.raises(ConfigError, match=r"'published'.*'deleted'"):
        ROWS.check_columns(["id", "title", "body", "author"], "table 'articles'")


def test_a_row_without_a_template_column_is_a_row_error():
    """A change-stream row lacking a column is reported for that row, not a crash."""
    with pytest.raises(RowError) as caught:
        ROWS.text({"title": "x"})
    assert caught.value.reason == "missing_column"


def test_metadata_values_become_json():
    """Timestamps, decimals, UUIDs, bytes and NaN become JSON values a payload can hold."""
    when = dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC)
    ident = uuid.UUID(int=1)
    assert json_value(when) == "2024-05-01T12:30:00+00:00"
    assert json_value(Decimal("12.00")) == 12
    assert json_value(Decimal("1.5")) == 1.5
    assert json_value(ident) == str(ident)
    assert json_value(b"\x01\xff") == "01ff"
    assert json_value(float("nan")) == "nan"
    assert json_value({"tags": ("a", 1)}) == {"tags": ["a", 1]}


@pytest.mark.parametrize(
    ("value", "deleted"),
    [(None, False), (False, False), (0, False), ("", False), ("false", False), ("N", False),
     (True, True), (1, True), ("yes", True), ("t", True), (dt.datetime(2024, 1, 1), True)],
)  # fmt: skip
def test_soft_delete_values(value, deleted):
    """Boolean, numeric and text flags and deleted_at timestamps all read as deleted or not."""
    assert is_deleted(value) is deleted


def test_cursor_values_become_microsecond_versions():
    """Integers stay, timestamps count microseconds since 1970 (naive as UTC), NULL is oldest."""
    naive = dt.datetime(2024, 5, 1, 12, 0, 0, 5)
    assert natural_version(42) == 42
    assert natural_version(Decimal(7)) == 7
    assert natural_version(None) == 0
    assert natural_version(naive) == natural_version(naive.replace(tzinfo=dt.UTC)) == 1_714_564_800_000_005
    assert natural_version("2024-05-01T12:00:00.000005") == 1_714_564_800_000_005
    assert natural_version(dt.date(1970, 1, 2)) == 86_400_000_000


def test_unusable_cursor_values_are_configuration_errors():
    """A boolean, a float or free text as the version column is refused with the reason."""
    for value in (True, 1.5, "yesterday"):
        with pytest.raises(ConfigError):
            natural_version(value)


def test_lookback_is_in_the_cursors_own_units():
    """Seconds before a timestamp (text timestamps keep their separator), units before an id."""
    assert minus_lookback(1000, 60) == 940
    assert minus_lookback(dt.datetime(2024, 5, 1, 12, 1), 60) == dt.datetime(2024, 5, 1, 12, 0)
    assert minus_lookback("2024-05-01 12:01:00", 30) == "2024-05-01 12:00:30"


@pytest.mark.parametrize(
    "value",
    [5, "k-17", dt.datetime(2024, 5, 1, 1, 2, 3, 4), dt.datetime(2024, 5, 1, tzinfo=dt.UTC),
     dt.date(2024, 5, 1), Decimal("3.25"), uuid.UUID(int=9)],
)  # fmt: skip
def test_checkpointed_keys_and_cursors_keep_their_type(value):
    """A snapshot key or cursor decodes to the value (and type) the database gave."""
    decoded = decode_value(encode_value(value))
    assert decoded == value
    assert type(decoded) is type(value)


def test_a_table_or_a_query_not_both():
    """Exactly one of table and query is accepted."""
    with pytest.raises(ConfigError):
        SqlTable(url="sqlite://", key="id", version="v", rows=ROWS)
    with pytest.raises(ConfigError):
        SqlTable(url="sqlite://", key="id", version="v", rows=ROWS, table="t", query="SELECT 1")


def test_checkpoint_never_regresses_a_document(tmp_path: Path):
    """A late commit of an older state leaves the newer one recorded (two passes cannot regress)."""
    states = KeyStates(tmp_path / "c.sqlite")
    states.record({"a": KeyState(5, "h5", "m")}, {"cursor": "x"})
    states.record({"a": KeyState(3, "h3", "m")}, {})
    assert states.get("a") == KeyState(5, "h5", "m")
    states.close()
    reopened = KeyStates(tmp_path / "c.sqlite")
    assert reopened.get("a") == KeyState(5, "h5", "m")
    assert reopened.position("cursor") == "x"
    reopened.close()


def test_an_unreadable_checkpoint_says_how_to_recover(tmp_path: Path):
    """A damaged checkpoint file is a configuration error that says to delete it."""
    broken = tmp_path / "c.sqlite"
    broken.write_bytes(b"not a database" * 100)
    with pytest.raises(ConfigError, match="delete it"):
        KeyStates(broken)


def test_unchanged_rows_emit_nothing_and_a_metadata_change_emits_an_upsert(tmp_path: Path):
    """The same text and metadata emit no event; new metadata alone is an upsert (payload only downstream)."""
    docs = Documents("articles", KeyStates(tmp_path / "c.sqlite"))
    first = docs.upsert("1", "Body", {"author": "ann"}, natural=10)
    docs.commit([first])
    docs.begin_pass()
    assert docs.upsert("1", "Body", {"author": "ann"}, natural=11).event is None
    changed = docs.upsert("1", "Body", {"author": "bob"}, natural=12)
    assert changed.event is not None
    assert changed.event.text == "Body"
    assert changed.event.version == 12


def test_a_recreated_row_outranks_its_tombstone(tmp_path: Path):
    """Delete then re-insert with an older cursor: the upsert's version is above the tombstone's."""
    docs = Documents("articles", KeyStates(tmp_path / "c.sqlite"))
    docs.commit([docs.upsert("1", "A", {}, natural=100)])
    deletion = docs.delete("1", natural=101)
    docs.commit([deletion])
    docs.begin_pass()
    back = docs.upsert("1", "A", {}, natural=50)
    assert back.event is not None
    assert back.event.version == 102


def test_versions_increase_within_one_pass(tmp_path: Path):
    """A document emitted twice before its first commit still gets a higher version the second time."""
    docs = Documents("articles", KeyStates(tmp_path / "c.sqlite"))
    first = docs.upsert("1", "A", {}, natural=7)
    second = docs.upsert("1", "B", {}, natural=7)
    assert first.event is not None
    assert second.event is not None
    assert second.event.version == first.event.version + 1
    assert isinstance(second.state, Checkpointed)


def test_deleting_an_unknown_document_emits_nothing_unless_forced(tmp_path: Path):
    """A soft-deleted row never indexed is no event; an orphan the index holds is deleted anyway."""
    docs = Documents("articles", KeyStates(tmp_path / "c.sqlite"))
    assert docs.delete("9", natural=5).event is None
    forced = docs.delete("9", natural=5, force=True)
    assert forced.event is not None
    assert forced.event.op == "delete"
