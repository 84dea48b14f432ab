"""The CLI's surface as a user meets it stays as recorded: every ``--help`` text and the shape
of every ``--json`` output (see ``tests/golden/capture.py``; rewrite the record with
``python -m tests.golden.capture --write`` when a change to the surface is intended)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.golden.capture import GOLDEN, helps, json_shapes


def test_every_help_text_is_as_recorded():
    """A refactoring never changes a flag, a default or a help line of any command."""
    recorded = json.loads(GOLDEN.read_text())["help"]
    now = helps()
    assert sorted(now) == sorted(recorded)
    changed = [name for name in recorded if now[name] != recorded[name]]
    assert changed == [], "\n\n".join(f"{name}:\n{now[name]}" for name in changed)


def test_every_json_output_has_the_recorded_shape(tiny_model: Path, monkeypatch):
    """Scripts that parse ``--json`` keep finding the same keys, types and exit codes."""
    monkeypatch.chdir(tiny_model.parent)
    assert json_shapes(tiny_model) == json.loads(GOLDEN.read_text())["json"]
