"""The ``embedstream`` app: its command groups, exit codes, the one mapping of errors to exit
codes (:func:`run`), the options given before a command, and the settings each command loads.

Logging is configured here and nowhere else. Exit codes are the named constants below.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from pipeline.cli.options import (
    CommonOptions,
    name_env_vars,
    shared_flags,
    takes,
)
from pipeline.cli.render import err, print_error
from pipeline.config.layers import Override
from pipeline.config.settings import LOG_LEVELS, Settings
from pipeline.core import faults
from pipeline.core.errors import (
    AuthenticationFailed,
    ConfigError,
    EmbedstreamError,
    FatalError,
    Refused,
    RetryableError,
    StoreLocked,
)
from pipeline.observability import logs

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_STORE_LOCKED = 4
EXIT_UNAVAILABLE = 5
EXIT_DRAIN_TIMEOUT = 6
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a process killed by it
EXIT_TERMINATED = 143  # 128 + SIGTERM

T = TypeVar("T")

app = typer.Typer(
    help="Keep a Qdrant vector index in step with your documents: chunk, deduplicate, embed, upsert.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
# `embedstream --help` lists the groups in this order, after the commands.
topics_app = typer.Typer(
    help="Kafka topics: create the pipeline's topics (idempotent).", no_args_is_help=True
)
dlq_app = typer.Typer(help="Dead-letter queue: inspect and replay poison events.", no_args_is_help=True)
source_app = typer.Typer(help="Source connectors that publish change events to Kafka.", no_args_is_help=True)
migrate_app = typer.Typer(
    help="Model migrations: build a new index version beside the live one, check it, switch atomically.",
    no_args_is_help=True,
)
app.add_typer(topics_app, name="topics")
app.add_typer(dlq_app, name="dlq")
app.add_typer(source_app, name="source")
app.add_typer(migrate_app, name="migrate")

# Flags of the main callback (--log-level, --strict), for load_settings to pass on.
_GLOBAL_FLAGS: ContextVar[tuple[Override, ...]] = ContextVar("embedstream_global_flags", default=())
# --config given before the command (`embedstream --config f.toml index ...`).
_GLOBAL_CONFIG: ContextVar[Path | None] = ContextVar("embedstream_global_config", default=None)


def load_settings(options: CommonOptions) -> Settings:
    """Flags > env > TOML > defaults, validated once: a flag gets the checks its env variable
    gets, and an error names it (``index.name: ... (from flag --index)``)."""
    given = [*_GLOBAL_FLAGS.get(), *options.flags()]
    config = options.config or _GLOBAL_CONFIG.get()
    settings = Settings.load(config, flags=given, known_env=_cli_env_vars())
    logs.configure(settings.log_level)
    if settings.state_dir.exists() and not settings.state_dir.is_dir():
        raise ConfigError(f"state_dir {settings.state_dir} is a file, not a directory: check --state-dir")
    return settings


@functools.cache
def _cli_env_vars() -> frozenset[str]:
    """EMBEDSTREAM_* variables that options read: not settings, so never "unknown"."""
    names = {"EMBEDSTREAM_CRASH_AT"}  # read by main() for fault-injection tests
    commands = [command()]
    while commands:
        each = commands.pop()
        names.update(p.envvar for p in each.params if isinstance(p.envvar, str))
        commands.extend(getattr(each, "commands", {}).values())
    return frozenset(names)


@functools.cache
def command() -> Any:  # typer's own click group (typer._click is private)
    """The click command behind `embedstream`, every option naming its environment variable
    in `--help` (see :func:`pipeline.cli.options.name_env_vars`)."""
    root = typer.main.get_command(app)
    name_env_vars(root, [])
    return root


# The first match wins: a subclass before its base.
_EXITS: tuple[tuple[type[EmbedstreamError], str, int], ...] = (
    (Refused, "refused", EXIT_USAGE),  # a safety check: the message names the flag that overrides it
    (StoreLocked, "error", EXIT_STORE_LOCKED),
    (AuthenticationFailed, "error", EXIT_UNAVAILABLE),  # a dependency refuses us: not a retryable outage
    (FatalError, "error", EXIT_CONFIG),
    (RetryableError, "unavailable", EXIT_UNAVAILABLE),
    (EmbedstreamError, "error", EXIT_FAILURE),
)


class Terminated(BaseException):
    """SIGTERM during a command that does not drain (``index``, ``search``...): unwinds
    like Ctrl-C's KeyboardInterrupt, so files are closed and the user is told."""


def run(action: Callable[[], T]) -> T:
    """Map the error tree to messages and exit codes, in one place."""
    try:
        with _sigterm_unwinds():
            return action()
    except EmbedstreamError as exc:
        label, code = next((label, code) for kind, label, code in _EXITS if isinstance(exc, kind))
        print_error(label, exc)
        raise typer.Exit(code) from exc
    except KeyboardInterrupt as exc:
        err.print("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from exc
    except Terminated as exc:
        err.print("terminated")
        raise typer.Exit(EXIT_TERMINATED) from exc


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` (a daemon's own handler, installed inside, drains
    instead). Only the main thread may install handlers; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(_signum: int, _frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _show_version(value: bool) -> None:
    if value:
        try:
            version = importlib.metadata.version("embedstream")
        except importlib.metadata.PackageNotFoundError:
            version = "unknown (not installed)"
        sys.stdout.write(f"embedstream {version}\n")
        raise typer.Exit(EXIT_OK)


@app.callback()
@takes("config", "state_dir", "index", "model")
def main_callback(
    common: CommonOptions,
    ctx: typer.Context,
    log_level: Annotated[
        str | None,
        typer.Option(
            metavar="LEVEL",
            help="DEBUG, INFO, WARNING or ERROR, in any case (default WARNING; setting log_level).",
            envvar="EMBEDSTREAM_LOG_LEVEL",
        ),
    ] = None,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            metavar="",
            help="Unknown keys in the TOML file or EMBEDSTREAM_* env are errors, not warnings.",
            envvar="EMBEDSTREAM_STRICT",
        ),
    ] = False,
    version: Annotated[  # noqa: ARG001 -- typer calls _show_version; the value is not needed here
        bool,
        typer.Option(
            "--version", metavar="", help="Print the version and exit.", callback=_show_version, is_eager=True
        ),
    ] = False,
) -> None:
    """The options shared by every command may also come before it:
    `embedstream --state-dir S index PATH` is `embedstream index PATH --state-dir S`
    (given in both places, the one after the command wins)."""
    flags = shared_flags(common.state_dir, common.index, common.model)
    _GLOBAL_CONFIG.set(common.config)
    if log_level is not None and _on_command_line(ctx, "log_level"):
        flags.append(Override("log_level", log_level, "flag --log-level"))
    if strict and _on_command_line(ctx, "strict"):
        flags.append(Override("strict", True, "flag --strict"))
    _GLOBAL_FLAGS.set(tuple(flags))
    # Until load_settings applies the configured level, warnings about settings must show.
    level = (log_level or "").upper()
    logs.configure(level if level in LOG_LEVELS else "WARNING")


def _on_command_line(ctx: typer.Context, name: str) -> bool:
    """Typed by the user, not filled from an env variable (the settings read that one)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def main() -> None:  # the console script
    # Models are never downloaded at run time: make any accidental hub access fail fast.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if crash_at := os.environ.get("EMBEDSTREAM_CRASH_AT"):  # fault-injection tests only
        faults.arm(crash_at)
    command()(prog_name="embedstream")
