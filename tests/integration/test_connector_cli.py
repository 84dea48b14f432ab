"""The connectors on the command line: what a user gets wrong is refused early, with the
right exit code and a message saying what to fix (real app through typer's CliRunner, real
SQLite file, tiny model)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from pipeline.cli import EXIT_CONFIG, EXIT_OK, EXIT_USAGE
from tests.cli_runner import cli

pytestmark = pytest.mark.usefixtures("isolated")


@pytest.fixture
def database(tmp_path: Path) -> str:
    """A SQLite file with two small tables."""
    path = tmp_path / "kb.db"
    with sqlite3.connect(path) as db:
        for table in ("articles", "faqs"):
            columns = "id INTEGER PRIMARY KEY, title TEXT, body TEXT, updated_at INTEGER"
            db.execute(f"CREATE TABLE {table} ({columns})")
            db.execute(f"INSERT INTO {table} VALUES (1, 'Pairing', 'Hold the button for five seconds.', 10)")
    return f"sqlite:///{path}"


def index_table(tmp_path: Path, tiny_model: Path, *args: str):
    common = ["--state-dir", str(tmp_path / "state"), "--model", str(tiny_model)]
    return cli(*common, "index", *args)


def test_index_takes_one_kind_of_source(tmp_path: Path, database: str):
    """A folder and a table at once is a usage error naming both (exit 2)."""
    result = cli("index", str(tmp_path), "--sql-url", database)
    assert result.exit_code == EXIT_USAGE
    assert "give one of PATH, --sql-url and --jsonl" in result.output


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--text", "{title}"], "--version is required"),
        (["--version", "updated_at"], "--text is required"),
        (["--version", "updated_at", "--text", "{title}", "--metadata", "author"], "has no column 'author'"),
        (["--version", "changed", "--text", "{title}"], "has no column 'changed'"),
    ],
)
def test_an_incomplete_table_description_is_refused(tmp_path, tiny_model, database, options, message):
    """A missing cursor or template, or a column the table lacks: exit 3 saying which."""
    result = index_table(tmp_path, tiny_model, "--sql-url", database, "--table", "articles", *options)
    assert result.exit_code == EXIT_CONFIG, result.output
    assert message in result.output


def test_a_source_name_stays_bound_to_its_table(tmp_path, tiny_model, database):
    """A second table under the same source name is refused; under its own name it is indexed."""
    table = ["--sql-url", database, "--version", "updated_at", "--text", r"{title}\n\n{body}"]
    first = index_table(tmp_path, tiny_model, *table, "--table", "articles", "--source", "kb")
    assert first.exit_code == EXIT_OK
    refused = index_table(tmp_path, tiny_model, *table, "--table", "faqs", "--source", "kb")
    assert refused.exit_code == EXIT_CONFIG
    assert "is bound to sql:sqlite:" in refused.output
    assert index_table(tmp_path, tiny_model, *table, "--table", "faqs").exit_code == EXIT_OK


def test_the_sql_daemon_refuses_a_missing_table_before_it_starts(tmp_path, database):
    """`source sql` on a table that does not exist exits 3 at once, naming the table."""
    result = cli(
        "source", "sql", "--url", database, "--table", "nope", "--version", "updated_at", "--text", "{title}",
        "--state-dir", str(tmp_path / "state"),
    )  # fmt: skip
    assert result.exit_code == EXIT_CONFIG
    assert "table 'nope' does not exist" in result.output


def test_the_debezium_daemon_needs_a_template(tmp_path):
    """`source debezium` without --text exits 3 before connecting to anything."""
    result = cli("source", "debezium", "--topic", "db.public.articles", "--state-dir", str(tmp_path / "s"))
    assert result.exit_code == EXIT_CONFIG
    assert "--text is required with --topic" in result.output
