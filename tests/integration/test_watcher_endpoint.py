"""The watcher's endpoint: it answers only for its own store, index and model, only with its
token, and clients never trust a stale or foreign watch.json. Real engine, tiny model."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from pipeline.config.settings import Settings
from pipeline.core.errors import ConfigError, StoreLocked
from pipeline.core.events import ChangeEvent
from pipeline.observability.http import DaemonServer, is_loopback
from pipeline.runtime.embedded import EmbeddedPipeline
from pipeline.runtime.serving import ENDPOINT_FILE, find_watcher, remote_search, remote_status, serve_pipeline


@pytest.fixture
def settings(tmp_path: Path, tiny_model: Path) -> Settings:
    return Settings.load(state_dir=tmp_path / "state", model={"name": str(tiny_model)})


@pytest.fixture
def watcher(settings: Settings) -> Iterator[tuple[EmbeddedPipeline, str]]:
    """A pipeline with two documents, served on loopback like `embedstream watch` does."""
    with (
        EmbeddedPipeline(settings) as pipeline,
        serve_pipeline(pipeline, CollectorRegistry(), "127.0.0.1:0") as url,
    ):
        pipeline.process(
            [
                ChangeEvent(
                    source="fs", doc_id=name, op="upsert", text=text, version=1, metadata={"title": title}
                )
                for name, text, title in [
                    ("ships.md", "Harbour cranes unload the ships.", "2024"),
                    ("garden.md", "Tomatoes need sun.", "garden"),
                ]
            ]
        )
        yield pipeline, url


def post(url: str, body: dict[str, Any], token: str | None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def endpoint_json(settings: Settings) -> dict[str, Any]:
    return dict(json.loads((settings.state_dir / ENDPOINT_FILE).read_text()))


def identity(settings: Settings, pipeline: EmbeddedPipeline) -> dict[str, str]:
    return {
        "state_dir": str(settings.state_dir.resolve()),
        "index": settings.index.name,
        "fingerprint": pipeline.encoder.fingerprint,
    }


def test_watch_json_says_who_answers_and_only_its_owner_reads_it(watcher, settings):
    """watch.json holds pid, resolved state dir, index, fingerprint, url and token, mode 0600."""
    pipeline, url = watcher
    endpoint = endpoint_json(settings)
    assert endpoint["pid"] == os.getpid()
    assert endpoint["state_dir"] == str(settings.state_dir.resolve())
    assert endpoint["index"] == "docs"
    assert endpoint["fingerprint"] == pipeline.encoder.fingerprint
    assert endpoint["url"] == url
    assert len(endpoint["token"]) >= 32
    assert stat.S_IMODE((settings.state_dir / ENDPOINT_FILE).stat().st_mode) == 0o600


def test_stopped_watcher_removes_its_file(settings):
    """Leaving serve_pipeline removes watch.json, so no client finds a watcher afterwards."""
    with EmbeddedPipeline(settings) as pipeline:
        with serve_pipeline(pipeline, CollectorRegistry(), "127.0.0.1:0"):
            assert (settings.state_dir / ENDPOINT_FILE).exists()
        assert not (settings.state_dir / ENDPOINT_FILE).exists()
        assert find_watcher(settings) is None


def test_clients_search_and_status_through_the_watcher(watcher, settings):
    """remote_search and remote_status answer from the watcher, with an empty-answer reason."""
    pipeline, _ = watcher
    answer = remote_search(settings, pipeline.encoder.fingerprint, "ships", 5, {})
    assert answer is not None
    assert sorted(r["doc_id"] for r in answer.results) == ["garden.md", "ships.md"]
    filtered = remote_search(settings, pipeline.encoder.fingerprint, "ships", 5, {"title": "nope"})
    assert filtered is not None
    assert filtered.results == []
    assert filtered.empty is not None
    assert "no document matches --filter title=nope (2 documents" in filtered.empty
    status = remote_status(settings)
    assert status is not None
    assert status["live"] == "docs__v1"


def test_requests_without_the_token_get_401_but_probes_stay_open(watcher, settings):
    """/search and /status need the token; /metrics, /healthz, /readyz do not."""
    pipeline, url = watcher
    body = {**identity(settings, pipeline), "query": "ships", "k": 3}
    assert post(url + "/search", body, None)[0] == 401
    assert post(url + "/search", body, "wrong")[0] == 401
    assert post(url + "/status", identity(settings, pipeline), None)[0] == 401
    assert post(url + "/search", body, endpoint_json(settings)["token"])[0] == 200
    for probe in ("/metrics", "/healthz", "/readyz"):
        with urllib.request.urlopen(url + probe, timeout=30) as response:
            assert response.status == 200


def test_watcher_refuses_another_index_store_or_model(watcher, settings):
    """A request naming another index, state dir or model fingerprint is refused with 409."""
    pipeline, url = watcher
    token = endpoint_json(settings)["token"]
    good = {**identity(settings, pipeline), "query": "ships", "k": 3}
    for key, value in [("index", "other"), ("state_dir", "/elsewhere"), ("fingerprint", "m@0")]:
        status, body = post(url + "/search", {**good, key: value}, token)
        assert status == 409, (key, body)
        assert key in body["error"]
    assert post(url + "/search", {**good, "query": "  "}, token)[0] == 400
    assert post(url + "/search", {**good, "k": 0}, token)[0] == 400


def test_client_with_another_index_gets_a_clear_store_locked(watcher, settings):
    """While a watcher of index 'docs' owns the store, searching index 'other' is StoreLocked naming both."""
    pipeline, _ = watcher
    other = settings.model_copy(update={"index": settings.index.model_copy(update={"name": "other"})})
    with pytest.raises(StoreLocked, match=r"serves index 'docs', not 'other'"):
        remote_search(other, pipeline.encoder.fingerprint, "ships", 3, {})


def test_client_with_another_model_gets_a_config_error(watcher, settings):
    """A search encoded with another model cannot be answered by the watcher: ConfigError."""
    with pytest.raises(ConfigError, match="was built with model"):
        remote_search(settings, "other-model@0123", "ships", 3, {})


def test_client_with_a_wrong_configured_token_gets_a_config_error(watcher, settings):
    """A client whose http.token differs from the watcher's is told so, not silently refused."""
    pipeline, _ = watcher
    mine = Settings.load(
        state_dir=settings.state_dir, model={"name": settings.model.name}, http={"token": "not-the-token"}
    )
    with pytest.raises(ConfigError, match="refused the token"):
        remote_search(mine, pipeline.encoder.fingerprint, "ships", 3, {})


def test_a_dead_watcher_is_not_trusted(settings, tmp_path):
    """watch.json of a process that is gone (a killed watcher) is ignored: no watcher answers."""
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    settings.state_dir.mkdir(parents=True)
    endpoint = {
        "pid": int(gone.stdout), "state_dir": str(settings.state_dir.resolve()), "index": "docs",
        "fingerprint": "m@0", "url": "http://127.0.0.1:9", "token": "t",
    }  # fmt: skip
    (settings.state_dir / ENDPOINT_FILE).write_text(json.dumps(endpoint))
    assert find_watcher(settings) is None
    assert remote_status(settings) is None


def test_a_copied_state_dir_does_not_reach_the_original_watcher(watcher, settings, tmp_path):
    """A watch.json copied along with a state dir describes the original store: ignored."""
    copy = tmp_path / "copy"
    shutil.copytree(settings.state_dir, copy, ignore=shutil.ignore_patterns("LOCK"))
    copied = settings.model_copy(update={"state_dir": copy})
    assert (copy / ENDPOINT_FILE).exists()
    assert find_watcher(copied) is None


def test_non_loopback_bind_needs_a_token(settings, tiny_model):
    """Binding 0.0.0.0 without http.token is a ConfigError; with a token it serves, token required."""
    with EmbeddedPipeline(settings) as pipeline:
        with (
            pytest.raises(ConfigError, match=r"http\.token"),
            serve_pipeline(pipeline, CollectorRegistry(), "0.0.0.0:0"),
        ):
            pass
        assert not (settings.state_dir / ENDPOINT_FILE).exists()
    secured = Settings.load(
        state_dir=settings.state_dir, model={"name": str(tiny_model)}, http={"token": "s3cret-token"}
    )
    with (
        EmbeddedPipeline(secured) as pipeline,
        serve_pipeline(pipeline, CollectorRegistry(), "0.0.0.0:0") as url,
    ):
        assert endpoint_json(secured)["token"] is None  # a configured secret is never written down
        local = url.replace("0.0.0.0", "127.0.0.1")
        body = {**identity(secured, pipeline), "query": "ships", "k": 1}
        assert post(local + "/search", body, None)[0] == 401
        assert post(local + "/search", body, "s3cret-token")[0] == 200


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("localhost", True), ("::1", True), ("0.0.0.0", False), ("192.0.2.1", False)],
)
def test_loopback_detection(host: str, loopback: bool) -> None:
    """Only addresses that stay on this machine count as loopback."""
    assert is_loopback(host) is loopback


def test_daemon_endpoint_without_routes_or_token_is_unchanged() -> None:
    """The Kafka daemons' /metrics, /healthz and /readyz answer as before (no token involved)."""
    server = DaemonServer("127.0.0.1:0", CollectorRegistry(), lambda: (False, "broker down")).start()
    try:
        with urllib.request.urlopen(server.url + "/healthz", timeout=30) as response:
            assert response.read() == b"ok\n"
        with pytest.raises(urllib.error.HTTPError) as excinfo:
            urllib.request.urlopen(server.url + "/readyz", timeout=30)
        assert excinfo.value.code == 503
    finally:
        server.stop()
