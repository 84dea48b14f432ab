"""Named crash points for fault-injection tests: a real ``kill -9`` at a chosen step.

The CLI arms them from ``EMBEDSTREAM_CRASH_AT`` (``name`` or ``name:N`` for the N-th time
the point is reached); unarmed, :func:`crash_point` is a set lookup and nothing else.
In-process tests arm them with ``kill=False``: the point raises :class:`SimulatedCrash`
(a ``BaseException``, so no ``except Exception`` on the way swallows it), and the test
drops every object of the "dead" process and opens the state dir again.
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

_armed: dict[str, int] = {}
_kill = True


class SimulatedCrash(BaseException):
    """A crash point reached while armed with ``kill=False``."""


def arm(spec: str, *, kill: bool = True) -> None:
    """``"sink.after_upsert:2,embed.after_produce"`` -> crash at those points."""
    global _kill  # noqa: PLW0603 -- one process-wide switch, like the armed points
    _kill = kill
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, count = item.partition(":")
        _armed[name] = int(count or 1)


def disarm() -> None:
    _armed.clear()


def crash_point(name: str) -> None:
    remaining = _armed.get(name)
    if remaining is None:
        return
    if remaining > 1:
        _armed[name] = remaining - 1
        return
    del _armed[name]
    if not _kill:
        raise SimulatedCrash(name)
    log.warning("fault injection: SIGKILL at %s", name)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.kill(os.getpid(), signal.SIGKILL)
