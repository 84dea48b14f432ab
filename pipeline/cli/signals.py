"""SIGINT/SIGTERM for long-running commands (``watch`` and the Kafka daemons): the first
signal drains the work in flight, a second one or an over-long drain exits at once."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

from pipeline.cli.app import EXIT_DRAIN_TIMEOUT, EXIT_INTERRUPTED
from pipeline.cli.render import err

_REDONE = "the uncommitted work in flight is done again after a restart"


@contextmanager
def stop_on_signals(stop: threading.Event, drain_timeout_s: float) -> Iterator[None]:
    """The first SIGINT/SIGTERM sets ``stop``: the pass or batch in flight finishes and is
    committed, then we exit. A second signal, or a drain longer than ``drain_timeout_s``,
    exits at once: the uncommitted batch is redelivered, so nothing is lost either way."""
    deadline: threading.Timer | None = None

    def handler(signum: int, _frame: object) -> None:
        nonlocal deadline
        name = signal.Signals(signum).name
        if stop.is_set():
            exit_now(EXIT_INTERRUPTED, f"second {name}: exiting now; {_REDONE}")
        stop.set()
        err.print(
            f"received {name}, finishing the current pass "
            f"(at most {drain_timeout_s:g} s; send it again to exit now)…"
        )
        message = f"drain took over {drain_timeout_s:g} s: exiting now; {_REDONE}"
        deadline = threading.Timer(drain_timeout_s, exit_now, (EXIT_DRAIN_TIMEOUT, message))
        deadline.daemon = True
        deadline.start()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        if deadline is not None:
            deadline.cancel()
        for sig, old in previous.items():
            signal.signal(sig, old)


def exit_now(code: int, message: str) -> NoReturn:
    """Leave without unwinding: the thread doing the work may be stuck in a call that
    never returns. Nothing uncommitted is lost (at-least-once redelivery)."""
    err.print(f"[red]{message}[/]")  # once: not also as a log line on the same stderr
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    os._exit(code)
