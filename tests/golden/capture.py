"""Capture what a user sees of the CLI: every command's ``--help`` and the shape of every
``--json`` output, on the tiny model and a three-file folder.

``tests/unit/test_cli_surface.py`` compares a fresh capture with ``cli_surface.json`` (written
by ``python -m tests.golden.capture --write`` before the package layout moved), so a
refactoring that changes a flag, a help line or a JSON key fails the suite.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

GOLDEN = Path(__file__).with_name("cli_surface.json")
WIDTH = "100"


def _isolated_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {name: "" for name in os.environ if name.upper().startswith("EMBEDSTREAM_")}
    env.update({"COLUMNS": WIDTH, "TERM": "dumb", "NO_COLOR": "1", **(extra or {})})
    return env


def _paths(each: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    for name, sub in sorted(getattr(each, "commands", {}).items()):
        found += _paths(sub, (*path, name))
    return found


def shape(value: Any) -> Any:
    """A JSON value's structure: keys and value types, lists reduced to their first element."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in sorted(value.items())}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    if isinstance(value, bool) or value is None:
        return type(value).__name__
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def helps() -> dict[str, str]:
    from pipeline.cli import app, command

    runner = CliRunner()
    out: dict[str, str] = {}
    for path in _paths(command()):
        result = runner.invoke(app, [*path, "--help"], env=_isolated_env())
        out[" ".join(path) or "embedstream"] = result.output
    return out


def json_shapes(model: Path) -> dict[str, Any]:
    from pipeline.cli import app

    runner = CliRunner()
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        docs = home / "docs"
        docs.mkdir()
        for name, text in {"a.md": "alpha beta gamma", "b.md": "delta epsilon", "c.txt": "zeta eta"}.items():
            (docs / name).write_text(text * 20)
        qrels = home / "q"
        qrels.mkdir()
        (qrels / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "alpha"}) + "\n")
        (qrels / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tdocs/a.md\t1\n")
        state = str(home / "state")
        env = _isolated_env({"EMBEDSTREAM_MODEL__NAME": str(model)})
        os.chdir(home)
        calls = {
            "index": ["index", str(docs), "--state-dir", state, "--json"],
            "search": ["search", "alpha", "--state-dir", state, "--json"],
            "status": ["status", "--state-dir", state, "--json"],
            "index-versions": ["index-versions", "--state-dir", state, "--json"],
            "migrate status": ["migrate", "status", "--state-dir", state, "--json"],
            "eval": [
                "eval", "--queries", str(qrels / "queries.jsonl"), "--qrels", str(qrels / "qrels.tsv"),
                "--state-dir", state, "--json",
            ],
            "dlq list": ["dlq", "list", "--state-dir", state, "--json"],
            "verify": ["verify", str(docs), "--state-dir", state, "--json"],
        }
        for name, args in calls.items():
            result = runner.invoke(app, args, env=env)
            try:
                out[name] = {"exit": result.exit_code, "shape": shape(json.loads(result.stdout))}
            except ValueError:
                out[name] = {"exit": result.exit_code, "stdout": result.stdout}
    return out


def capture(model: Path) -> dict[str, Any]:
    return {"help": helps(), "json": json_shapes(model)}


if __name__ == "__main__":
    from tests.tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        surface = capture(build_tiny_model(Path(tmp), seed=0))
    text = json.dumps(surface, indent=1, sort_keys=True) + "\n"
    if "--write" in sys.argv:
        GOLDEN.write_text(text)
    else:
        sys.stdout.write(text)
