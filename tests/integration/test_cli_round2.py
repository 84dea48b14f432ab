"""A CLI that never lies (issue 19): no traceback for a user mistake, the documented exit
code, strict JSON, escaped terminal output, a source on every hit, counts that add up.

Through typer's CliRunner on the real app (and real processes for signals); stores are the
real embedded engine, the model the tiny one.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import Result

from pipeline.cli import EXIT_CONFIG, EXIT_OK, EXIT_USAGE
from pipeline.observability import logs
from tests.cli_runner import cli
from tests.conftest import REPO

pytestmark = pytest.mark.usefixtures("isolated")

WORDS = "harbour ships sail at dawn while gulls circle the old lighthouse and nets dry in the sun "


def reject(name: str) -> Any:
    raise ValueError(f"not JSON: {name}")


def strict(text: str) -> Any:
    return json.loads(text, parse_constant=reject)


def no_traceback(result: Result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output


def one_error_line(result: Result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def make_docs(tmp_path: Path) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("Harbour notes: ships sail at dawn.")
    (docs / "b.txt").write_text("Sourdough bread needs a starter and patience.")
    return docs


def indexed(tmp_path: Path, model: Path, *extra: str) -> list[str]:
    """Index a small folder; returns the options that name its store and model."""
    options = ["--state-dir", str(tmp_path / "state"), "--model", str(model)]
    result = cli("index", str(make_docs(tmp_path)), *options, *extra)
    assert result.exit_code == EXIT_OK, result.output
    return options


# --------------------------------------------------------------------------- 1. tracebacks


@pytest.mark.parametrize("command", ["embed", "sink"])
def test_embed_and_sink_with_a_bad_setting_exit_3_in_one_line(command: str) -> None:
    """A bad setting is one line and exit 3 for the workers too, as for every other command."""
    result = cli(command, env={"EMBEDSTREAM_INDEX__DIMS": "abc"})
    no_traceback(result)
    assert result.exit_code == EXIT_CONFIG
    assert one_error_line(result).startswith("error: index.dims: ")


@pytest.mark.parametrize("command", [["status"], ["search", "ships"], ["index", "."]])
def test_a_state_dir_that_is_a_file_exits_3(tmp_path: Path, tiny_model: Path, command: list[str]) -> None:
    """--state-dir naming a file: exit 3, one line saying it is not a directory."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    result = cli("--model", str(tiny_model), *command, "--state-dir", str(afile))
    no_traceback(result)
    assert result.exit_code == EXIT_CONFIG
    assert "is a file" in one_error_line(result)


def test_a_huge_k_is_a_usage_error(tmp_path: Path, tiny_model: Path) -> None:
    """-k 99999999999999999999 is refused as a usage error, not an OverflowError."""
    options = indexed(tmp_path, tiny_model)
    result = cli("search", "ships", "-k", "99999999999999999999", *options)
    no_traceback(result)
    assert result.exit_code == EXIT_USAGE


def test_a_sql_url_with_a_non_numeric_port_exits_3(tmp_path: Path, tiny_model: Path) -> None:
    """postgresql://u@host:abc/db: one line naming the URL, exit 3."""
    url = "postgresql+psycopg://u@localhost:abc/db"
    result = cli(
        "index", "--sql-url", url, "--table", "t", "--version", "v", "--text", "{a}",
        "--state-dir", str(tmp_path / "state"), "--model", str(tiny_model),
    )  # fmt: skip
    no_traceback(result)
    assert result.exit_code == EXIT_CONFIG
    assert "port" in one_error_line(result)


@pytest.mark.parametrize(("option", "value"), [("--quantization", "pq"), ("--datatype", "int4")])
def test_migrate_start_bad_storage_value_is_a_usage_error(tmp_path: Path, option: str, value: str) -> None:
    """A value outside the choices: exit 2, the choices named, no pydantic dump."""
    result = cli("migrate", "start", option, value, "--state-dir", str(tmp_path / "state"))
    no_traceback(result)
    assert result.exit_code == EXIT_USAGE
    assert "validation error" not in result.output
    assert option in result.output
    assert "pydantic" not in result.output


# --------------------------------------------------------------------------- 2. exit codes


def _table(tmp_path: Path) -> Path:
    db = tmp_path / "db.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("create table t (id integer primary key, v integer, body text)")
        conn.execute("insert into t values (1, 1, 'hello')")
    return db


def test_a_sql_syntax_error_exits_3_saying_query(tmp_path: Path, tiny_model: Path) -> None:
    """A typo in --query is a configuration error (3), and the message speaks of the query."""
    db = _table(tmp_path)
    result = cli(
        "index", "--sql-url", f"sqlite:///{db}", "--query", "SELEC id, v, body FROM t", "--version", "v",
        "--text", "{body}", "--state-dir", str(tmp_path / "state"), "--model", str(tiny_model),
    )  # fmt: skip
    no_traceback(result)
    assert result.exit_code == EXIT_CONFIG, result.output
    line = one_error_line(result)
    assert "query" in line
    assert "table's columns" not in line


@pytest.mark.parametrize("where", ["missing.sqlite", "nodir/missing.sqlite"])
def test_a_missing_sqlite_file_exits_3_not_created(tmp_path: Path, tiny_model: Path, where: str) -> None:
    """sqlite:///missing: exit 3 saying there is no such file; none is created."""
    db = tmp_path / where
    result = cli(
        "index", "--sql-url", f"sqlite:///{db}", "--table", "t", "--version", "v", "--text", "{body}",
        "--state-dir", str(tmp_path / "state"), "--model", str(tiny_model),
    )  # fmt: skip
    no_traceback(result)
    assert result.exit_code == EXIT_CONFIG, result.output
    assert "no such" in one_error_line(result)
    assert not db.exists()


def test_gc_abandon_negative_is_a_usage_error(tmp_path: Path) -> None:
    """--abandon -1 is a bad flag value: exit 2."""
    result = cli("migrate", "gc", "--abandon", "-1", "--state-dir", str(tmp_path / "state"))
    assert result.exit_code == EXIT_USAGE


# --------------------------------------------------------------------------- 3. JSON


def _eval_files(tmp_path: Path, doc: str) -> tuple[Path, Path]:
    queries, qrels = tmp_path / "q.jsonl", tmp_path / "qrels.tsv"
    queries.write_text(json.dumps({"_id": "q1", "text": "ships at dawn"}) + "\n")
    qrels.write_text(f"query-id\tcorpus-id\tscore\nnosuchquery\t{doc}\t1\n")
    return queries, qrels


def test_eval_with_every_query_skipped_prints_null_and_warns(tmp_path: Path, tiny_model: Path) -> None:
    """No qrels query matches: --json has null scores (never NaN), and stderr says why."""
    options = indexed(tmp_path, tiny_model)
    queries, qrels = _eval_files(tmp_path, "a.md")
    result = cli("eval", "--queries", str(queries), "--qrels", str(qrels), "--json", *options[:2])
    assert result.exit_code == EXIT_OK, result.output
    (report,) = strict(result.stdout)
    assert report["ndcg_at_10"] is None
    assert "skipped" in result.stderr


def test_every_json_output_is_strict_json(tmp_path: Path, tiny_model: Path) -> None:
    """Every --json command's output parses with a parser that rejects NaN and Infinity."""
    options = indexed(tmp_path, tiny_model)
    state = options[:2]
    queries, qrels = _eval_files(tmp_path, "a.md")
    config = tmp_path / "eval.toml"
    config.write_text(f'[index]\neval_queries = "{queries}"\neval_qrels = "{qrels}"\n')
    events = tmp_path / "events.jsonl"
    events.write_text('{"doc_id": "x", "text": "hello"}\nnot json\n')
    commands = [
        ["index", str(tmp_path / "docs"), *options, "--json"],
        ["index", "--jsonl", str(events), *options, "--json"],
        ["search", "ships", *options, "--json"],
        ["status", *state, "--json"],
        ["dlq", "list", "--local", *state, "--json"],
        ["migrate", "status", *state, "--config", str(config), "--json"],
        ["index-versions", *state, "--json"],
        ["eval", "--queries", str(queries), "--qrels", str(qrels), *state, "--json"],
        ["config", *state],
    ]
    for command in commands:
        result = cli(*command)
        assert result.exit_code == EXIT_OK, (command, result.output)
        strict(result.stdout)


# --------------------------------------------------------------------------- 4. accepted but wrong


@pytest.mark.parametrize("value", ["0", "-5"])
@pytest.mark.parametrize("command", [["watch"], ["source", "fs"]])
def test_an_interval_must_be_positive(tmp_path: Path, command: list[str], value: str) -> None:
    """--interval 0 or -5 would busy-loop: exit 2 before anything starts."""
    result = cli(*command, str(tmp_path), "--interval", value, "--state-dir", str(tmp_path / "state"))
    assert result.exit_code == EXIT_USAGE, result.output
    assert "--interval" in result.output


def test_migrate_start_on_an_unknown_index_exits_3(tmp_path: Path, tiny_model: Path) -> None:
    """`migrate start nosuch` (a typo) says there is no such index and creates nothing."""
    options = indexed(tmp_path, tiny_model)
    result = cli("migrate", "start", "nosuch", *options[:2])
    no_traceback(result)
    assert result.exit_code == EXIT_CONFIG, result.output
    assert "no index 'nosuch'" in one_error_line(result)
    assert "nosuch" not in cli("status", "--index", "nosuch", *options[:2], "--json").stdout.replace(
        '"alias": "nosuch"', ""
    )


@pytest.mark.parametrize("command", [["status"], ["search", "ships"]])
def test_a_missing_state_dir_is_not_created(tmp_path: Path, tiny_model: Path, command: list[str]) -> None:
    """search/status on a state dir that does not exist say so, and leave it absent."""
    state = tmp_path / "nosuch"
    result = cli("--model", str(tiny_model), *command, "--state-dir", str(state))
    no_traceback(result)
    assert result.exit_code == EXIT_OK, result.output
    assert "does not exist" in result.output
    assert not state.exists()


# --------------------------------------------------------------------------- 5. terminal safety


def test_control_characters_are_escaped_in_text_but_kept_in_json(tmp_path: Path, tiny_model: Path) -> None:
    """An escape sequence in a document and a newline in a file name never reach the terminal."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("hello world \x1b]0;pwned\x07 \x1b[2J cleared")
    (docs / "new\nline.txt").write_text("hello second document")
    options = ["--state-dir", str(tmp_path / "state"), "--model", str(tiny_model)]
    assert cli("index", str(docs), *options).exit_code == EXIT_OK
    text = cli("search", "hello", *options)
    assert "\x1b" not in text.output
    assert "\x07" not in text.output
    assert "\\x1b" in text.output
    hits = [line for line in text.stdout.splitlines() if line[:1].isdigit()]
    assert len(hits) == 2, text.stdout  # one line per hit: the newline is shown as \n
    assert any("new\\nline.txt" in line for line in hits)
    raw = strict(cli("search", "hello", *options, "--json").stdout)
    assert {"new\nline.txt", "a.txt"} == {r["doc_id"] for r in raw}
    assert any("\x1b" in r["text"] for r in raw)


# --------------------------------------------------------------------------- 6. source


def test_search_shows_each_hits_source(tmp_path: Path, tiny_model: Path) -> None:
    """Two sources with the same relative path are two hits that can be told apart."""
    options = ["--state-dir", str(tmp_path / "state"), "--model", str(tiny_model)]
    for name in ("one", "two"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "same.md").write_text(f"harbour ships at dawn ({name})")
        assert cli("index", str(folder), "--source", name, *options).exit_code == EXIT_OK
    results = strict(cli("search", "harbour", *options, "--json").stdout)
    assert {(r["source"], r["doc_id"]) for r in results} == {("one", "same.md"), ("two", "same.md")}
    text = cli("search", "harbour", *options).stdout
    assert "one/same.md" in text
    assert "two/same.md" in text


# --------------------------------------------------------------------------- 7. counts


def _total(summary: dict[str, Any]) -> int:
    docs = summary["docs"]
    return (
        docs["added"] + docs["changed"] + docs["unchanged"] + docs["deleted"] + docs["stale"]
        + sum(summary["skipped"].values()) + summary["dead_lettered"]
    )  # fmt: skip


def test_index_counts_add_up_on_a_mixed_folder(tmp_path: Path, tiny_model: Path) -> None:
    """added + changed + unchanged + deleted + skipped + dead-lettered = documents seen, and a
    dead-lettered document is never counted as unchanged."""
    docs = tmp_path / "docs"
    docs.mkdir()
    config = tmp_path / "limits.toml"
    config.write_text("[limits]\nmax_chunks_per_doc = 2\n[chunking]\nmax_tokens = 32\noverlap_tokens = 4\n")
    options = ["--state-dir", str(tmp_path / "state"), "--model", str(tiny_model), "--config", str(config)]
    for name in ("keep", "change", "gone"):
        (docs / f"{name}.md").write_text(f"{name}: a short note about the harbour.")
    (docs / "huge.md").write_text(WORDS * 40)  # too many chunks: dead-lettered
    first = strict(cli("index", str(docs), *options, "--json").stdout)
    assert first["dead_lettered"] == 1
    assert first["docs"]["added"] == 3
    assert _total(first) == first["seen"] == 4

    (docs / "change.md").write_text("change: now about bread.")
    (docs / "gone.md").unlink()
    (docs / "new.md").write_text("new: a note about gulls.")
    (docs / "binary.md").write_bytes(b"\x00\x01\x02binary")
    second = strict(cli("index", str(docs), *options, "--json").stdout)
    assert second["docs"] == {"added": 1, "changed": 1, "unchanged": 1, "deleted": 1, "stale": 0}
    assert second["dead_lettered"] == 1
    assert sum(second["skipped"].values()) == 1
    assert _total(second) == second["seen"] == 6


def test_jsonl_counts_add_up_and_invalid_lines_are_dead_lettered(tmp_path: Path, tiny_model: Path) -> None:
    """A mixed JSON lines file: an invalid line counts once, as dead-lettered."""
    events = tmp_path / "events.jsonl"
    events.write_text(
        '{"doc_id": "a", "text": "harbour"}\n{"doc_id": "b", "text": "bread"}\nnot json\n'
        '{"doc_id": "c"}\n'
    )
    options = ["--state-dir", str(tmp_path / "state"), "--model", str(tiny_model)]
    first = strict(cli("index", "--jsonl", str(events), *options, "--json").stdout)
    assert first["dead_lettered"] == 2
    assert first["docs"]["added"] == 2
    assert _total(first) == first["seen"] == 4
    events.write_text('{"doc_id": "a", "text": "harbour"}\n{"doc_id": "b", "op": "delete"}\nbad\n')
    second = strict(cli("index", "--jsonl", str(events), *options, "--json").stdout)
    assert (second["docs"]["unchanged"], second["docs"]["deleted"], second["dead_lettered"]) == (1, 1, 1)
    assert _total(second) == second["seen"] == 3


# --------------------------------------------------------------------------- 8. noise


def test_library_loggers_stay_at_warning() -> None:
    """kafka and friends log at WARNING and above, even at --log-level debug (kafka-python's
    DEBUG lines carry its SASL password), while our own loggers follow the level."""
    for level in ("INFO", "DEBUG"):
        logs.configure(level)
        assert logging.getLogger("kafka").getEffectiveLevel() == logging.WARNING
        assert logging.getLogger("kafka.conn").getEffectiveLevel() == logging.WARNING
        assert logging.getLogger("httpcore").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("pipeline").getEffectiveLevel() == logging.DEBUG


INDEX_FOREVER = """
import threading, sys
import pipeline.cli.local as local
def forever(*_args):
    print("ready", flush=True)
    threading.Event().wait()
local._index_once = forever
sys.argv = ["embedstream", "index", sys.argv[1]]
from pipeline.cli import main
main()
"""


def test_index_on_sigterm_says_terminated_and_exits_143(tmp_path: Path) -> None:
    """SIGTERM during `index`: "terminated", exit 143 (SIGINT: "interrupted", 130)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", INDEX_FOREVER, str(tmp_path)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    _, errors = proc.communicate(timeout=30)
    assert proc.returncode == 143
    assert "terminated" in errors
    assert "Traceback" not in errors


SECOND_SIGNAL = """
import threading
from pipeline.cli.signals import stop_on_signals
stop = threading.Event()
with stop_on_signals(stop, drain_timeout_s=600):
    print("ready", flush=True)
    stop.wait()
    print("draining", flush=True)
    threading.Event().wait()
"""


def test_the_second_signal_message_is_printed_once() -> None:
    """A second SIGINT says so once on stderr, not once as text and once as a log line."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SECOND_SIGNAL],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGINT)
    assert proc.stdout.readline().strip() == "draining"
    time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, errors = proc.communicate(timeout=30)
    assert errors.count("second SIGINT") == 1, errors


def test_each_invalid_line_is_printed_once(tmp_path: Path, tiny_model: Path) -> None:
    """An invalid line is reported once, not on stdout and again as a warning on stderr."""
    events = tmp_path / "events.jsonl"
    events.write_text('{"doc_id": "a", "text": "harbour"}\nnot json\n')
    result = cli(
        "index", "--jsonl", str(events),
        "--state-dir", str(tmp_path / "state"), "--model", str(tiny_model),
    )  # fmt: skip
    assert result.exit_code == EXIT_OK, result.output
    assert result.output.count("line 2") == 1, result.output


# --------------------------------------------------------------------------- 9. wording


def _hold_lock(state: Path, owner: str) -> Any:
    (state / "qdrant").mkdir(parents=True, exist_ok=True)
    handle = (state / "qdrant" / "LOCK").open("a+")
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    handle.write(owner)
    handle.flush()
    return handle


def test_store_in_use_hint_fits_index_and_a_second_watcher(tmp_path: Path, tiny_model: Path) -> None:
    """`index` and `watch` on a store in use say to wait or stop the owner, never to query
    it over HTTP (that is the hint for search and status)."""
    docs = make_docs(tmp_path)
    state = tmp_path / "state"
    handle = _hold_lock(state, f"pid {os.getpid()}\n")
    try:
        for command in (["index", str(docs)], ["watch", str(docs)]):
            result = cli("--model", str(tiny_model), *command, "--state-dir", str(state))
            assert result.exit_code == 4, result.output
            line = one_error_line(result)
            assert "HTTP endpoint" not in line
            assert f"pid {os.getpid()}" in line
    finally:
        handle.close()


def test_status_piped_keeps_its_headers(tmp_path: Path, tiny_model: Path) -> None:
    """`status | cat` (not a terminal) shows every column header whole."""
    options = indexed(tmp_path, tiny_model)
    text = cli("status", *options[:2]).stdout
    for header in ("collection", "quantization", "documents", "points"):
        assert header in text, text


@pytest.mark.parametrize("command", [["dlq", "replay"], ["migrate", "status"]])
def test_no_flag_shows_bool(command: list[str]) -> None:
    """Flags are shown as flags in --help, never as <bool>."""
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *command, "--help"], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == EXIT_OK
    assert "<bool>" not in result.stdout


def test_config_naming_a_directory_says_so(tmp_path: Path) -> None:
    """--config DIR: "is a directory", not "does not exist"."""
    result = cli("config", "--config", str(tmp_path))
    assert result.exit_code == EXIT_CONFIG
    assert "is a directory" in one_error_line(result)


def test_rollback_to_a_version_that_never_existed_says_so(tmp_path: Path, tiny_model: Path) -> None:
    """--to 9 when only v1 ever existed: "never existed", not a hint at gc."""
    options = indexed(tmp_path, tiny_model)
    result = cli("migrate", "rollback", "--to", "9", *options[:2])
    assert result.exit_code == EXIT_CONFIG
    line = one_error_line(result)
    assert "gc" not in line
    assert "no version 9" in line


def test_migrate_status_on_an_empty_store_prints_a_hint(tmp_path: Path) -> None:
    """No version yet: a sentence saying how to make one, not an empty table."""
    result = cli("migrate", "status", "--state-dir", str(tmp_path / "state"))
    assert result.exit_code == EXIT_OK
    assert "embedstream index" in result.output
    assert "┃" not in result.output


# --------------------------------------------------------------------------- 10. state dir


def test_the_state_dir_inside_the_folder_is_never_indexed(tmp_path: Path, tiny_model: Path) -> None:
    """--include '**/*' with the state dir inside the folder: the store is not a document."""
    docs = make_docs(tmp_path)
    options = ["--state-dir", str(docs / "state"), "--model", str(tiny_model), "--include", "**/*"]
    cli("index", str(docs), *options)
    second = strict(cli("index", str(docs), *options, "--json").stdout)
    assert second["docs"]["added"] == 0
    assert second["docs"]["unchanged"] == 2
    assert second["seen"] == 2
