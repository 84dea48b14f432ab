"""Named crash points for fault-injection tests: a real ``kill -9`` at a chosen step.

The CLI arms them from ``EMBEDSTREAM_CRASH_AT`` (``name`` or ``name:N`` for the N-th time
the point is reached); unarmed, :func:`crash_point` is a set lookup and nothing else.
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

_armed: dict[str, int] = {}


def arm(spec: str) -> None:
    """``"sink.after_upsert:2,embed.after_produce"`` -> crash at those points."""
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, count = item.partition(":")
        _armed[name] = int(count or 1)


def crash_point(name: str) -> None:
    remaining = _armed.get(name)
    if remaining is None:
        return
    if remaining > 1:
        _armed[name] = remaining - 1
        return
    log.warning("fault injection: SIGKILL at %s", name)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.kill(os.getpid(), signal.SIGKILL)
