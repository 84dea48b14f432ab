"""The options most commands share, declared once, and how their values become settings.

An option's value reaches the settings as a flag (:func:`flag`), so it gets the checks its
environment variable gets. Every option names its environment variable in ``--help``
(:func:`name_env_vars`): its own, else ``EMBEDSTREAM_<COMMAND>_<OPTION>``.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.config.layers import Override
from pipeline.config.settings import ENV_PREFIX
from pipeline.versions.search import parse_filter


def env_var(key: str) -> str:
    """The environment variable of a setting: ``index.name`` is ``EMBEDSTREAM_INDEX__NAME``."""
    return ENV_PREFIX + key.upper().replace(".", "__")


def _setting(key: str, *names: str, metavar: str | None = None, text: str) -> Any:
    """An option for the setting ``key``, read from that setting's environment variable."""
    return typer.Option(*names, metavar=metavar, help=text, envvar=env_var(key))


ConfigOpt = Annotated[
    Path | None, _setting("config", "--config", "-c", metavar="FILE", text="TOML settings file.")
]
StateOpt = Annotated[
    Path | None,
    _setting("state_dir", metavar="DIR", text="Where the embedded store, cache and checkpoints live."),
]
IndexOpt = Annotated[
    str | None, _setting("index.name", "--index", metavar="NAME", text="Index (alias) name.")
]
ModelOpt = Annotated[
    str | None,
    _setting("model.name", metavar="MODEL", text="Model directory, or all-MiniLM-L6-v2 (bundled)."),
]
# metavar="" shows a flag as a flag (typer would print <bool>).
JsonOpt = Annotated[bool, _setting("json", "--json", metavar="", text="Print one JSON document for scripts.")]
HttpOpt = Annotated[
    str | None, _setting("http.addr", "--http", text="host:port for /metrics, /healthz, /readyz.")
]
# Commands on one index take its name as an argument too: `migrate status docs`.
IndexArg = Annotated[
    str | None, typer.Argument(metavar="[INDEX]", help="Index (alias) name; default: --index / index.name.")
]
BootstrapOpt = Annotated[
    str | None, _setting("kafka.bootstrap", "--bootstrap", text="Kafka bootstrap servers.")
]

MassDeleteOpt = Annotated[
    bool,
    typer.Option(
        "--allow-mass-delete",
        metavar="",
        help="Allow a pass to delete more than half of the source's indexed documents.",
    ),
]


@dataclass(frozen=True, kw_only=True)
class CommonOptions:
    """What a command was told about its settings; None: not given on the command line, so
    the environment, the TOML file or the defaults decide."""

    config: Path | None = None
    state_dir: Path | None = None
    index: str | None = None
    model: str | None = None
    http: str | None = None
    bootstrap: str | None = None
    target: str | None = None  # the INDEX argument

    def flags(self) -> list[Override]:
        return [
            *shared_flags(self.state_dir, self.index_name(), self.model),
            *flag("http.addr", self.http, "--http"),
            *flag("kafka.bootstrap", self.bootstrap, "--bootstrap"),
        ]

    def index_name(self) -> str | None:
        """INDEX or --index: given both, they must agree."""
        if self.target and self.index and self.target != self.index:
            msg = f"INDEX {self.target!r} and --index {self.index!r} disagree"
            raise typer.BadParameter(msg, param_hint="INDEX")
        return self.target or self.index


#: Each shared option: its parameter name (what typer names the option after, when the option
#: gives no name of its own) and its declaration.
_SHARED: dict[str, tuple[str, Any]] = {
    "target": ("index_arg", IndexArg),
    "config": ("config", ConfigOpt),
    "state_dir": ("state_dir", StateOpt),
    "index": ("index_name", IndexOpt),
    "model": ("model", ModelOpt),
    "http": ("http", HttpOpt),
    "bootstrap": ("bootstrap", BootstrapOpt),
}

Command = Callable[..., None]


def takes(*fields: str) -> Callable[[Command], Command]:
    """Give a command the shared options ``fields`` (names of :class:`CommonOptions` fields).

    They are appended, in this order, after the command's own parameters (``--help`` lists
    them last), and the command receives their values as one parameter instead of one each:
    ``common: CommonOptions``, declared first by convention.
    """
    unknown = set(fields) - set(_SHARED)
    if unknown:
        raise ValueError(f"no shared option {sorted(unknown)}")
    params = {field: _SHARED[field][0] for field in fields}
    declared = [parameter(params[field], _SHARED[field][1], None) for field in fields]

    def common(given: dict[str, Any]) -> CommonOptions:
        return CommonOptions(**{field: given[param] for field, param in params.items()})

    return lambda command: expand(command, "common", declared, common, last=True)


def parameter(name: str, declared: Any, default: Any = inspect.Parameter.empty) -> inspect.Parameter:
    """A command parameter ``name`` declared as ``declared`` (an ``Annotated`` option or argument),
    for :func:`expand`."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=declared)


def expand(
    command: Command,
    name: str,
    declared: list[inspect.Parameter],
    gather: Callable[[dict[str, Any]], object],
    *,
    last: bool = False,
) -> Command:
    """``command`` with its parameter ``name`` declared as the parameters ``declared`` instead
    (in its place, or after all others when ``last``); it receives ``gather`` of their values.

    typer reads the parameters from the signature and calls the command with keywords only.
    """
    own = inspect.signature(command, eval_str=True)
    kept: list[inspect.Parameter] = []
    for param in own.parameters.values():
        if param.name == name:
            kept.extend([] if last else declared)
        else:  # keyword-only: a declared one without default may follow one with a default
            kept.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY))
    signature = own.replace(parameters=[*kept, *(declared if last else [])])

    @functools.wraps(command)
    def expanded(**given: Any) -> None:
        values = {param.name: given.pop(param.name) for param in declared}
        command(**given, **{name: gather(values)})

    vars(expanded).update(
        __signature__=signature,
        __annotations__={p.name: p.annotation for p in signature.parameters.values()},
    )
    return expanded


def shared_flags(state_dir: Path | None, index: str | None, model: str | None) -> list[Override]:
    """The options every command has (before or after its name)."""
    return [
        *flag("state_dir", state_dir, "--state-dir"),
        *flag("index.name", index, "--index"),
        *flag("model.name", model, "--model"),
    ]


def flag(key: str, value: object, option: str) -> list[Override]:
    """An option's value as a flag, unless unset or filled by typer from the setting's own
    variable: the settings read that variable themselves and name it, not the flag, in errors."""
    if value is None:
        return []
    from_env = os.environ.get(env_var(key))
    if from_env is not None and value == (Path(from_env) if isinstance(value, Path) else from_env):
        return []
    return [Override(key, value, f"flag {option}")]


def positive_seconds(value: float) -> float:
    """An ``--interval``'s callback: 0 or less would rescan without pause, burning a core."""
    if value <= 0:
        raise typer.BadParameter(f"{value:g} is not a number of seconds above 0")
    return value


#: The pause between two passes over a folder (watch, source fs).
RescanOpt = Annotated[
    float, typer.Option(metavar="SECONDS", help="Seconds between rescans.", callback=positive_seconds)
]


def parse_filters(raw: list[str]) -> dict[str, str]:
    """``--filter KEY=VALUE`` options, each key once (all must hold)."""
    filters: dict[str, str] = {}
    for item in raw:
        try:
            key, value = parse_filter(item)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--filter") from exc
        if key in filters:
            raise typer.BadParameter(f"{key} is given twice (all filters must hold)", param_hint="--filter")
        filters[key] = value
    return filters


_NO_ENV = {"help", "version", "install_completion", "show_completion"}


# Typer ships its own click (typer._click, private): its commands and options are typed Any
# here and told apart by what they are, not their class.
def name_env_vars(each: Any, path: list[str]) -> None:
    """Give each option of ``each`` and its subcommands an environment variable shown in
    ``--help``: its own, else ``EMBEDSTREAM_<COMMAND>_<OPTION>`` (click's auto_envvar
    convention, e.g. ``EMBEDSTREAM_INDEX_INCLUDE``, ``EMBEDSTREAM_MIGRATE_START_DIMS``)."""
    for param in each.params:
        is_option = getattr(param, "param_type_name", "") == "option"
        if is_option and param.name in ("install_completion", "show_completion"):
            param.metavar = ""  # typer's own flags: shown as flags, not <bool>
        if is_option and not param.envvar and param.name not in _NO_ENV:
            param.envvar = "_".join(["EMBEDSTREAM", *path, param.name or ""]).upper().replace("-", "_")
            param.show_envvar = True
    each.get_help_option = _flag_shaped(each.get_help_option)
    for name, sub in getattr(each, "commands", {}).items():
        name_env_vars(sub, [*path, name])


def _flag_shaped(make: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """click builds --help per invocation; show it as the flag it is, not <bool>."""

    def help_option(ctx: Any) -> Any:
        option = make(ctx)
        if option is not None:
            option.metavar = ""
        return option

    return help_option
