"""SIGTERM handling of daemons and watch: drain, bounded drain, second signal exits at once.

Runs a real process (signals cannot be tested in the pytest process itself); the body
stands for a batch that never finishes, e.g. a call stuck on an unreachable backend.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from pipeline.cli import EXIT_DRAIN_TIMEOUT, EXIT_INTERRUPTED
from tests.conftest import REPO

SCRIPT = """
import sys, threading, time
from pipeline.cli.signals import stop_on_signals as _stop_on_signals
stop = threading.Event()
with _stop_on_signals(stop, drain_timeout_s=float(sys.argv[1])):
    print("ready", flush=True)
    stop.wait()
    print("draining", flush=True)
    time.sleep(float(sys.argv[2]))  # the batch in flight
print("drained", flush=True)
"""


def start(drain_timeout_s: float, batch_s: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(drain_timeout_s), str(batch_s)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    try:
        out, errors = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("process did not exit")
    return proc.returncode, out, errors


def test_sigterm_lets_the_batch_in_flight_finish() -> None:
    proc = start(drain_timeout_s=30, batch_s=0.5)
    proc.send_signal(signal.SIGTERM)
    rc, out, errors = finish(proc)
    assert rc == 0
    assert out.split() == ["draining", "drained"]
    assert "at most 30 s" in errors


def test_a_drain_over_its_bound_exits_without_finishing() -> None:
    proc = start(drain_timeout_s=1, batch_s=600)
    proc.send_signal(signal.SIGTERM)
    rc, out, errors = finish(proc)
    assert rc == EXIT_DRAIN_TIMEOUT
    assert "drained" not in out
    assert "drain took over 1 s" in errors


def test_a_second_signal_exits_at_once() -> None:
    proc = start(drain_timeout_s=600, batch_s=600)
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "draining"
    time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    rc, out, errors = finish(proc)
    assert rc == EXIT_INTERRUPTED
    assert "drained" not in out
    assert "second SIGINT" in errors
