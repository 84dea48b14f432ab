"""`embedstream --help` as a user reads it: every option names its environment variable."""

from __future__ import annotations

from typing import Any

from pipeline.cli import command


def options(each: Any, path: str = "") -> list[tuple[str, Any]]:
    found = [(path, p) for p in each.params if getattr(p, "param_type_name", "") == "option"]
    for name, sub in getattr(each, "commands", {}).items():
        found += options(sub, f"{path} {name}".strip())
    return found


def test_every_option_of_every_command_names_an_environment_variable():
    """Each option (but --help, --version and typer's completion flags) has an EMBEDSTREAM_ variable."""
    missing = [
        f"{path or 'embedstream'} --{p.name}"
        for path, p in options(command())
        if p.name not in {"help", "version", "install_completion", "show_completion"}
        and not (isinstance(p.envvar, str) and p.envvar.startswith("EMBEDSTREAM_") and p.show_envvar)
    ]
    assert missing == []


def test_command_options_without_a_setting_get_a_command_qualified_variable():
    """Options that are not settings are named after their command, so --key of `dlq replay`
    and --key of `index` never share a variable."""
    names = {(path, p.name): p.envvar for path, p in options(command())}
    assert names[("index", "include")] == "EMBEDSTREAM_INDEX_INCLUDE"
    assert names[("dlq replay", "key")] == "EMBEDSTREAM_DLQ_REPLAY_KEY"
    assert names[("index", "state_dir")] == "EMBEDSTREAM_STATE_DIR"
