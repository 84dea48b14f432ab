"""A real Prometheus scrapes an embedstream daemon.

Prometheus is Debian's ``prometheus`` package (``.ci/run`` installs it); the test skips,
saying so, only where the binary is not on PATH. It starts Prometheus on a free loopback
port with a generated config whose one job scrapes the ``/metrics`` of a sink daemon
running in this process against the test broker (``tests/kafka_fixtures.py``), queries
Prometheus's HTTP API until the embedstream series appear (bounded wait), and stops it by
its process id.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeline.config.settings import KafkaSettings, Settings
from pipeline.runtime.daemons import run_sink

pytestmark = pytest.mark.kafka

JOB = "embedstream-sink"
WAIT_S = 90.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@dataclass
class Prometheus:
    """One ``prometheus`` process on 127.0.0.1:``port``, storage and log under ``root``."""

    binary: str
    root: Path
    targets: list[str]
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.root / "prometheus.log"

    def start(self, timeout_s: float = 60) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        config = self.root / "prometheus.yml"
        config.write_text(
            json.dumps(  # JSON is YAML: no quoting to get wrong
                {
                    "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                    "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": self.targets}]}],
                }
            ),
            encoding="utf-8",
        )
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.root / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
            )
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}:\n{self.log_tail()}")
            with (
                contextlib.suppress(OSError, ValueError),
                urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response,
            ):
                if response.status == 200:
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"prometheus not ready within {timeout_s:.0f} s:\n{self.log_tail()}")
            time.sleep(0.2)

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector ``promql`` evaluates to now (``/api/v1/query``)."""
        answer = _get(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def wait_for(self, promql: str, timeout_s: float = WAIT_S) -> list[dict[str, Any]]:
        """Query until ``promql`` returns a series; fails with the targets' state after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.query(promql)
            if found:
                return found
            if time.monotonic() > deadline:
                targets = _get(f"{self.url}/api/v1/targets")["data"]["activeTargets"]
                pytest.fail(f"no series for {promql} within {timeout_s:.0f} s; targets: {targets}")
            time.sleep(0.5)

    def stop(self, timeout_s: float = 15) -> None:
        """SIGTERM by pid, SIGKILL if it has not exited after ``timeout_s``."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        pytest.skip("prometheus is not on PATH: install Debian's prometheus package (.ci/run does)")
    return found


@dataclass(frozen=True)
class Scraped:
    prometheus: Prometheus
    metrics_addr: str


@pytest.fixture
def scraped_sink(tmp_path: Path, kafka_settings: KafkaSettings, prometheus_binary: str) -> Iterator[Scraped]:
    """A sink daemon (index docs, version 1, embedded engine) serving /metrics on a free
    port, and a Prometheus scraping it every second; both stopped after the test."""
    addr = f"127.0.0.1:{_free_port()}"
    settings = Settings.load(
        state_dir=tmp_path / "state", kafka=kafka_settings.model_dump(), http={"addr": addr}
    )
    stop, failures = threading.Event(), []

    def daemon() -> None:
        try:
            run_sink(settings, 1, stop)
        except BaseException as exc:  # what would end the process
            failures.append(exc)

    thread = threading.Thread(target=daemon, name="sink-daemon")
    thread.start()
    prometheus = Prometheus(prometheus_binary, tmp_path / "prometheus", [addr])
    try:
        prometheus.start()
        yield Scraped(prometheus, addr)
        assert failures == [], f"the sink daemon failed: {failures}"
    finally:
        prometheus.stop()
        stop.set()
        thread.join(60)
    assert prometheus.proc is not None
    assert prometheus.proc.poll() is not None, "prometheus still running"


def test_prometheus_scrapes_the_daemon(scraped_sink: Scraped) -> None:
    """Prometheus reaches the daemon's /metrics (up == 1) and stores its embedstream series:
    the consumer lag the daemon reports every few seconds, per stage, topic and partition."""
    prom = scraped_sink.prometheus
    up = prom.wait_for(f'up{{job="{JOB}"}} == 1')
    assert up[0]["metric"]["instance"] == scraped_sink.metrics_addr
    lag = prom.wait_for(f'embedstream_consumer_lag{{job="{JOB}", stage="sink"}}')
    assert {series["metric"]["partition"] for series in lag} == {"0", "1", "2"}
    names = prom.query(f'count by (__name__) ({{job="{JOB}", __name__=~"embedstream_.+"}})')
    assert {series["metric"]["__name__"] for series in names} >= {"embedstream_consumer_lag"}


def test_per_version_series_carry_index_version(scraped_sink: Scraped) -> None:
    """The sink daemon of version 1 labels its per-version series index_version="docs@v1",
    so Prometheus can tell two versions' sink groups apart."""
    prom = scraped_sink.prometheus
    lag = prom.wait_for(f'embedstream_consumer_lag{{job="{JOB}", stage="sink"}}')
    assert {series["metric"].get("index_version") for series in lag} == {"docs@v1"}
