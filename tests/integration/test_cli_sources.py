"""`embedstream index` at the edges users hit: bad names, mass deletions, globs, symlinks,
two folders, a moved folder, spec changes, options before the command, local dead letters.

Through the real app (typer's CliRunner), the real embedded engine and the tiny model:
exit codes and messages are checked.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from pipeline.cli import EXIT_CONFIG, EXIT_OK, EXIT_USAGE
from tests.cli_runner import cli

pytestmark = pytest.mark.usefixtures("isolated")

CHUNKS = {"EMBEDSTREAM_CHUNKING__MAX_TOKENS": "48", "EMBEDSTREAM_CHUNKING__OVERLAP_TOKENS": "8"}


@pytest.fixture
def run(tmp_path: Path, tiny_model: Path):
    """``run("index", path, ...)`` with this test's state dir and the tiny model (given
    before the command, where every command accepts them)."""

    def invoke(*args: str, env: dict[str, str] | None = None):
        common = ["--state-dir", str(tmp_path / "state"), "--model", str(tiny_model)]
        return cli(*common, *args, env={**CHUNKS, **(env or {})})

    return invoke


def summary(result) -> dict:
    assert result.exit_code == EXIT_OK, result.output
    return json.loads(result.stdout)


def write(root: Path, relpath: str, text: str) -> None:
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    for n in range(4):
        write(root, f"sub/note-{n}.md", f"# Note {n}\n\nA note about subject number {n} and its details.")
    return root


def test_a_file_name_that_is_not_utf8_is_skipped_and_the_rest_indexed(run, docs):
    """A name that is not UTF-8 is skipped as undecodable_name; others are indexed, every pass."""
    with open(os.path.join(os.fsencode(docs), b"bad-\xff-name.md"), "w") as handle:
        handle.write("# Bad name\n\nThe text is fine; the name is not.")
    first = summary(run("index", str(docs), "--json"))
    assert first["skipped"] == {"undecodable_name": 1}
    assert first["docs"]["added"] == 4
    again = summary(run("index", str(docs), "--json"))
    assert again["docs"]["unchanged"] == 4


def test_a_pass_that_would_delete_most_documents_is_refused(run, docs):
    """An --include that matches nothing any more refuses with exit 2 and deletes nothing;
    --allow-mass-delete goes ahead."""
    summary(run("index", str(docs), "--json"))
    refused = run("index", str(docs), "--include", "/*.md")
    assert refused.exit_code == EXIT_USAGE
    assert "--allow-mass-delete" in refused.stderr
    assert "would delete 4 of the 4 documents" in refused.stderr
    status = json.loads(run("status", "--json").stdout)
    assert status["versions"][0]["documents"] == 4
    allowed = summary(run("index", str(docs), "--include", "/*.md", "--allow-mass-delete", "--json"))
    assert allowed["docs"]["deleted"] == 4


def test_a_glob_without_a_slash_matches_at_any_depth_and_others_count_as_unsupported(run, docs):
    """--include '*.md' matches files in sub-folders (gitignore rules); other extensions are
    counted as unsupported in the summary."""
    write(docs, "sub/deeper/script.py", "print('not a document')")
    result = run("index", str(docs), "--include", "*.md")
    assert result.exit_code == EXIT_OK, result.output
    assert "4 added" in result.stdout
    assert "skipped: 1 unsupported" in result.stdout


def test_symlinks_leaving_the_folder_are_not_followed_unless_asked(run, docs, tmp_path):
    """A file symlink pointing outside the folder is skipped by default, indexed on request."""
    write(tmp_path, "outside/secret.md", "# Outside\n\nText that lives outside the indexed folder.")
    (docs / "link.md").symlink_to(tmp_path / "outside" / "secret.md")
    first = summary(run("index", str(docs), "--json"))
    assert first["skipped"] == {"symlink_outside_root": 1}
    followed = summary(run("index", str(docs), "--follow-symlinks", "--json"))
    assert followed["docs"]["added"] == 1


def test_a_second_folder_under_the_same_source_name_is_refused(run, docs, tmp_path):
    """Indexing another folder under the name the first one holds exits 3 and says --source;
    with its own name both are indexed."""
    other = tmp_path / "other"
    write(other, "readme.md", "# Readme\n\nThe other folder's readme.")
    summary(run("index", str(docs), "--json"))
    refused = run("index", str(other))
    assert refused.exit_code == EXIT_CONFIG
    assert "--source NAME" in refused.stderr
    both = summary(run("index", str(other), "--source", "other", "--json"))
    assert both["docs"]["added"] == 1
    assert json.loads(run("status", "--json").stdout)["versions"][0]["documents"] == 5


def test_a_moved_folder_is_rebound_and_keeps_its_documents(run, docs, tmp_path):
    """mv docs elsewhere: index refuses (exit 3, names --rebind); with --rebind nothing is
    re-encoded and a file deleted meanwhile leaves the index."""
    summary(run("index", str(docs), "--json"))
    moved = tmp_path / "moved"
    docs.rename(moved)
    (moved / "sub" / "note-0.md").unlink()
    refused = run("index", str(moved))
    assert refused.exit_code == EXIT_CONFIG
    assert "--rebind" in refused.stderr
    rebound = summary(run("index", str(moved), "--rebind", "--json"))
    assert (rebound["docs"]["deleted"], rebound["chunks"]["encoded"]) == (1, 0)


def test_changing_the_storage_spec_of_an_existing_index_exits_3_and_points_at_migrations(run, docs):
    """index.dims / datatype / quantization changes are refused, not silently ignored."""
    summary(run("index", str(docs), "--json"))
    changed = run(
        "index", str(docs), env={"EMBEDSTREAM_INDEX__DIMS": "16", "EMBEDSTREAM_INDEX__DATATYPE": "float16"}
    )
    assert changed.exit_code == EXIT_CONFIG
    assert "dims: index has 32, settings ask for 16" in changed.stderr
    assert "migrate start" in changed.stderr


def test_shared_options_work_before_or_after_the_command(docs, tmp_path, tiny_model):
    """`embedstream --state-dir S --model M index D` equals `embedstream index D --state-dir S --model M`."""
    before = cli(
        "--state-dir",
        str(tmp_path / "a"),
        "--model",
        str(tiny_model),
        "index",
        str(docs),
        "--json",
        env=CHUNKS,
    )
    after = cli(
        "index",
        str(docs),
        "--json",
        "--state-dir",
        str(tmp_path / "b"),
        "--model",
        str(tiny_model),
        env=CHUNKS,
    )
    assert summary(before)["docs"] == summary(after)["docs"]
    assert (tmp_path / "a" / "qdrant").is_dir()


def test_dead_letters_of_the_embedded_mode_are_listed_without_kafka(run, docs):
    """`embedstream dlq list` reads the embedded mode's local log when no broker is configured."""
    write(docs, "invisible.md", "\u200b\u200b\u200b")
    summary(run("index", str(docs), "--json"))
    listed = run("dlq", "list", "--json")
    assert listed.exit_code == EXIT_OK, listed.output
    (letter,) = json.loads(listed.stdout)
    assert (letter["key"], letter["reason"]) == ("fs/invisible.md", "empty_text")


def test_index_dims_larger_than_the_models_is_refused_before_encoding(run, docs, tmp_path):
    """index.dims over the model's 32 dimensions exits 3 naming both, and nothing is encoded."""
    refused = run("index", str(docs), env={"EMBEDSTREAM_INDEX__DIMS": "64"})
    assert refused.exit_code == EXIT_CONFIG
    assert "index.dims=64 exceeds" in refused.stderr
    assert "32 dimensions" in refused.stderr
    cache = tmp_path / "state" / "cache.sqlite"
    if cache.exists():
        assert sqlite3.connect(cache).execute("SELECT COUNT(*) FROM vectors").fetchone() == (0,)


def test_a_corrupt_alias_file_says_how_to_recover_instead_of_a_traceback(run, docs, tmp_path):
    """A damaged state_dir/qdrant/aliases.json: exit 3, the file named, and the way out."""
    summary(run("index", str(docs), "--json"))
    (tmp_path / "state" / "qdrant" / "aliases.json").write_text("{not json")
    result = run("status")
    assert result.exit_code == EXIT_CONFIG
    assert "aliases.json is corrupt" in result.stderr
    assert "delete it and re-run" in result.stderr
    assert "Traceback" not in result.output
