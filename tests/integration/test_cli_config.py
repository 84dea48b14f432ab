"""The CLI's answers to configuration mistakes, usage errors and searches, as a user sees them.

Through typer's CliRunner on the real app (and one real process): exit codes and messages
are checked, never internals. Stores are the real embedded engine, the model the tiny one.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import Result

from pipeline.cli import EXIT_CONFIG, EXIT_OK, EXIT_USAGE
from tests.cli_runner import cli
from tests.conftest import REPO

pytestmark = pytest.mark.usefixtures("isolated")


def error_lines(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


def test_wrong_type_in_env_exits_3_naming_key_and_variable() -> None:
    """EMBEDSTREAM_INDEX__DIMS=abc: exit 3, one line naming index.dims and the variable, no traceback."""
    result = cli("config", env={"EMBEDSTREAM_INDEX__DIMS": "abc"})
    assert result.exit_code == EXIT_CONFIG
    (line,) = error_lines(result)
    assert line.startswith("error: index.dims: ")
    assert line.endswith("(from env EMBEDSTREAM_INDEX__DIMS)")
    assert "Traceback" not in result.output


def test_every_problem_gets_its_own_line(tmp_path: Path) -> None:
    """Two bad TOML values and a bad env value are three lines, each with its source."""
    config = tmp_path / "many.toml"
    config.write_text('[index]\ndims = "x"\ndatatype = "float64"\n')
    result = cli("config", "--config", str(config), env={"EMBEDSTREAM_LIMITS__MAX_DOC_BYTES": "-5"})
    assert result.exit_code == EXIT_CONFIG
    lines = error_lines(result)
    assert len(lines) == 3
    assert lines[0].startswith("error: limits.max_doc_bytes: ")
    assert lines[0].endswith("(from env EMBEDSTREAM_LIMITS__MAX_DOC_BYTES)")
    assert lines[1].endswith(f"(from {config}:2)")
    assert lines[2].startswith("error: index.datatype: ")
    assert lines[2].endswith(f"(from {config}:3)")


def test_malformed_toml_exits_3_with_its_line(tmp_path: Path) -> None:
    """A TOML syntax error names file:line; section names in it are printed, not eaten as markup."""
    config = tmp_path / "broken.toml"
    config.write_text('[index]\nname = "x"\n[kafka\n')
    result = cli("config", "-c", str(config))
    assert result.exit_code == EXIT_CONFIG
    (line,) = error_lines(result)
    assert line.startswith(f"error: {config}:3: invalid TOML")


def test_index_flag_is_validated_like_its_env_variable(tmp_path: Path) -> None:
    """--index ../../x exits 3 naming the flag, and nothing is written anywhere."""
    state = tmp_path / "state"
    for command in (["status"], ["search", "anything"]):
        result = cli(*command, "--index", "../../x", "--state-dir", str(state))
        assert result.exit_code == EXIT_CONFIG, result.output
        (line,) = error_lines(result)
        assert line.startswith("error: index.name: ")
        assert line.endswith("(from flag --index)")
    assert not state.exists()


def test_a_value_typer_read_from_env_is_named_as_env(tmp_path: Path) -> None:
    """EMBEDSTREAM_INDEX__NAME feeds the --index option too; the error still names the variable."""
    result = cli("status", "--state-dir", str(tmp_path / "s"), env={"EMBEDSTREAM_INDEX__NAME": "a/b"})
    assert result.exit_code == EXIT_CONFIG
    assert error_lines(result)[0].endswith("(from env EMBEDSTREAM_INDEX__NAME)")


@pytest.mark.parametrize(
    ("args", "env", "toml"),
    [
        (["--log-level", "debug"], {}, ""),
        ([], {"EMBEDSTREAM_LOG_LEVEL": "Debug"}, ""),
        ([], {}, 'log_level = "dEBUG"\n'),
    ],
    ids=["flag", "env", "toml"],
)
def test_log_level_is_case_insensitive_everywhere(
    args: list[str], env: dict[str, str], toml: str, tmp_path: Path
) -> None:
    """debug in any case is accepted from the flag, the env variable and the TOML file."""
    config = tmp_path / "level.toml"
    config.write_text(toml)
    result = cli(*args, "config", "-c", str(config), env=env)
    assert result.exit_code == EXIT_OK, result.output
    assert json.loads(result.stdout)["log_level"] == "DEBUG"


def test_bad_log_level_flag_exits_3_naming_the_flag() -> None:
    """--log-level loud is a configuration error naming log_level and the flag."""
    result = cli("--log-level", "loud", "config")
    assert result.exit_code == EXIT_CONFIG
    (line,) = error_lines(result)
    assert line.startswith("error: log_level: ")
    assert "'loud'" in line
    assert line.endswith("(from flag --log-level)")


def test_unknown_keys_warn_and_strict_refuses(tmp_path: Path) -> None:
    """A misspelt TOML key is a warning with a suggestion (exit 0); with --strict it is exit 3."""
    config = tmp_path / "typo.toml"
    config.write_text("[chunking]\nmax_token = 64\n")
    relaxed = cli("config", "-c", str(config))
    assert relaxed.exit_code == EXIT_OK
    assert "chunking.max_token: no such setting" in relaxed.stderr
    assert "did you mean chunking.max_tokens?" in relaxed.stderr
    strict = cli("--strict", "config", "-c", str(config))
    assert strict.exit_code == EXIT_CONFIG
    assert error_lines(strict) == [
        f"error: chunking.max_token: no such setting ({config}:2); did you mean chunking.max_tokens?"
    ]


def test_unknown_env_variable_is_reported_but_cli_variables_are_not() -> None:
    """EMBEDSTREAM_INDEX_NAME (one underscore) is reported; option variables like EMBEDSTREAM_JSON are not."""
    result = cli("--strict", "config", env={"EMBEDSTREAM_INDEX_NAME": "x", "EMBEDSTREAM_SEARCH_LIMIT": "3"})
    assert result.exit_code == EXIT_CONFIG
    (line,) = error_lines(result)
    assert "EMBEDSTREAM_INDEX_NAME: no such setting" in line
    assert "did you mean EMBEDSTREAM_INDEX__NAME?" in line


def test_version_prints_and_exits_0() -> None:
    """--version prints the installed version and exits 0 without a command."""
    result = cli("--version")
    assert result.exit_code == EXIT_OK
    assert re.fullmatch(r"embedstream \S+\n", result.stdout)


@pytest.mark.parametrize("command", ["search", "status", "config"])
def test_help_shows_value_names_and_env_variables(command: str) -> None:
    """Flags show no <bool>, options show a value name, and every option names its env variable."""
    result = cli(command, "--help", env={"COLUMNS": "200"})
    assert result.exit_code == EXIT_OK
    rows = [line for line in result.stdout.splitlines() if re.match(r"^│ +-", line)]
    options = [row for row in rows if "--help" not in row]
    assert options
    for row in options:
        for typer_type in ("<bool>", "<path>", "<str>"):
            assert typer_type not in row, row
    for name in ("EMBEDSTREAM_CONFIG", "EMBEDSTREAM_STATE_DIR"):
        assert name in result.stdout
    if command == "search":
        assert "EMBEDSTREAM_SEARCH_LIMIT" in result.stdout
        assert "KEY=VALUE" in result.stdout


def test_main_help_shows_global_flags() -> None:
    """--strict and --version are listed as flags; --log-level with its value name and variable."""
    result = cli("--help", env={"COLUMNS": "200"})
    assert re.search(r"--log-level +LEVEL", result.stdout)
    assert "EMBEDSTREAM_STRICT" in result.stdout
    assert not re.search(r"--(strict|version) +<bool>", result.stdout)


@pytest.mark.parametrize("query", ["", "   ", "\n\t"])
def test_empty_query_is_a_usage_error(query: str) -> None:
    """A blank query exits 2 before anything is opened or encoded."""
    result = cli("search", query)
    assert result.exit_code == EXIT_USAGE
    assert "QUERY" in result.output


def test_malformed_or_repeated_filter_is_a_usage_error() -> None:
    """--filter without = or the same key twice exits 2 naming --filter."""
    for args in (["--filter", "ext"], ["--filter", "ext=.md", "--filter", "ext=.txt"]):
        result = cli("search", "q", *args)
        assert result.exit_code == EXIT_USAGE
        assert "--filter" in result.output


HARBOUR = "Harbour cranes unload ships at dawn and trucks carry the containers away."


@pytest.fixture
def indexed(tmp_path: Path, tiny_model: Path) -> list[str]:
    """A store with one long document (many chunks) and four short ones; common CLI args."""
    docs = tmp_path / "docs"
    docs.mkdir()
    sentence = HARBOUR + " "
    (docs / "harbour.md").write_text("\n\n".join(sentence * 3 + f"Berth {i}." for i in range(150)))
    for name, text in {
        "garden.md": "Tomatoes need sun and water.",
        "kitchen.md": "Simmer the onions slowly.",
        "2024.md": "The yearly report.",
        "music.txt": "A minor chord sounds darker.",
    }.items():
        (docs / name).write_text(text)
    common = ["--state-dir", str(tmp_path / "state"), "--model", str(tiny_model)]
    result = cli("index", str(docs), *common)
    assert result.exit_code == EXIT_OK, result.output
    return common


def search_json(common: list[str], *args: str) -> list[dict[str, object]]:
    result = cli("search", *args, *common, "--json")
    assert result.exit_code == EXIT_OK, result.output
    return list(json.loads(result.stdout))


def test_k_documents_through_the_cli(indexed: list[str]) -> None:
    """-k 5 returns 5 distinct documents although one document owns the best chunks."""
    results = search_json(indexed, f"{HARBOUR} {HARBOUR}", "-k", "5")
    assert results[0]["doc_id"] == "harbour.md"
    assert len({r["doc_id"] for r in results}) == len(results) == 5


def test_filter_on_a_number_like_title_through_the_cli(indexed: list[str]) -> None:
    """--filter title=2024 finds the file whose title is "2024"."""
    assert [r["doc_id"] for r in search_json(indexed, "report", "--filter", "title=2024")] == ["2024.md"]


def test_no_match_and_nothing_indexed_say_different_things(indexed: list[str], tmp_path: Path) -> None:
    """A filter that matches nothing and an empty store get different messages, both exit 0."""
    unmatched = cli("search", "ships", "--filter", "ext=.pdf", *indexed)
    assert unmatched.exit_code == EXIT_OK
    assert "no document matches --filter ext=.pdf (5 documents" in unmatched.stdout
    model = indexed[indexed.index("--model") + 1]
    empty = cli("search", "ships", "--state-dir", str(tmp_path / "empty"), "--model", model)
    assert empty.exit_code == EXIT_OK
    assert "nothing is indexed in index 'docs' yet" in empty.stdout


def test_corrupt_cache_database_exits_3_with_the_way_out(tmp_path: Path, tiny_model: Path) -> None:
    """A cache.sqlite that is not a database: exit 3 naming the file and saying to delete it."""
    docs, state = tmp_path / "docs", tmp_path / "state"
    docs.mkdir()
    (docs / "a.md").write_text("Some text.")
    state.mkdir()
    (state / "cache.sqlite").write_bytes(b"this is not a database, it is a grocery list" * 100)
    result = cli("index", str(docs), "--state-dir", str(state), "--model", str(tiny_model))
    assert result.exit_code == EXIT_CONFIG, result.output
    (line,) = error_lines(result)
    assert str(state / "cache.sqlite") in line
    assert "delete it" in line
    assert "Traceback" not in result.output


def test_a_real_process_reports_config_errors_in_one_line_each() -> None:
    """`python -m pipeline.cli` itself: exit 3, one stderr line, no traceback."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("EMBEDSTREAM_")}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "config"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**env, "EMBEDSTREAM_INDEX__DIMS": "abc", "EMBEDSTREAM_INDEX__QUANTIZATION": "pq"},
    )  # fmt: skip
    assert result.returncode == EXIT_CONFIG
    assert result.stderr.splitlines() == [
        line for line in result.stderr.splitlines() if line.startswith("error: index.")
    ]
    assert len(result.stderr.splitlines()) == 2
