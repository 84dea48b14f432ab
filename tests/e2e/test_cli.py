"""The `embedstream` command as a user runs it: real processes, real store, real model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO

CLI = [sys.executable, "-m", "pipeline.cli"]


def embedstream(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=_env()
    )
    if check and result.returncode != 0:
        raise AssertionError(f"embedstream {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
def test_index_corpus_twice_then_search_with_the_bundled_model(tmp_path):
    """all-MiniLM-L6-v2: re-index encodes 0 chunks, and a topic query finds its document in the top 3."""
    state = str(tmp_path / "state")
    first = json.loads(embedstream("index", "examples/corpus", "--state-dir", state, "--json").stdout)
    assert first["docs"]["added"] >= 30
    assert first["chunks"]["encoded"] > 30
    second = json.loads(embedstream("index", "examples/corpus", "--state-dir", state, "--json").stdout)
    assert second["chunks"]["encoded"] == 0
    assert second["docs"]["unchanged"] == first["docs"]["added"]

    queries = {
        "my door sensor battery drains too fast": "support/door-sensor-battery-life.txt",
        "how do consumer groups rebalance partitions": (
            "engineering/kafka-consumer-groups-and-rebalancing.rst"
        ),
        "how much time off do employees get": "handbook/vacation-and-leave-policy.md",
        "baking bread with a starter": "notes/sourdough-bread-recipe.txt",
    }
    for query, expected in queries.items():
        results = json.loads(embedstream("search", query, "-k", "3", "--state-dir", state, "--json").stdout)
        assert expected in [r["doc_id"] for r in results], (query, results)
        assert {"doc_id", "score", "text", "metadata"} <= set(results[0])
        assert results[0]["metadata"]["path"] == results[0]["doc_id"]

    filtered = json.loads(
        embedstream("search", "battery", "--filter", "ext=.md", "--state-dir", state, "--json").stdout
    )
    assert filtered
    assert all(r["doc_id"].endswith(".md") for r in filtered)
    status = json.loads(embedstream("status", "--state-dir", state, "--json").stdout)
    assert status["live"] == "docs__v1"
    assert status["versions"][0]["documents"] == first["docs"]["added"]


def test_config_masks_secrets(tmp_path):
    """`embedstream config` prints the effective settings without secret values."""
    config = tmp_path / "embedstream.toml"
    config.write_text(
        '[store]\nurl = "http://qdrant:6333"\napi_key = "hunter2"\n[chunking]\nmax_tokens = 128\n'
    )
    result = embedstream("config", "--config", str(config))
    shown = json.loads(result.stdout)
    assert shown["store"]["url"] == "http://qdrant:6333"
    assert shown["chunking"]["max_tokens"] == 128
    assert "hunter2" not in result.stdout


def test_help_documents_env_variables():
    """`--help` names the environment variable behind an option."""
    result = embedstream("index", "--help")
    assert "EMBEDSTREAM_STATE_DIR" in result.stdout


def _wait_for(predicate, timeout: float, what: str, process: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the watcher exited {process.returncode}: {process.stderr.read()}")  # type: ignore[union-attr]
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_watch_serves_searches_and_follows_edits(tmp_path, tiny_model):
    """While `watch` owns the store, `search` from another process works and sees new edits."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "first.md").write_text("The first document talks about harbours and ships.")
    state = tmp_path / "state"
    common = ["--state-dir", str(state), "--model", str(tiny_model)]
    watcher = subprocess.Popen(
        [*CLI, "watch", str(docs), "--interval", "0.3", *common],
        cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        endpoint = state / "watch.json"
        _wait_for(endpoint.is_file, 120, "the watcher endpoint", watcher)

        def found(doc_id: str) -> bool:
            results = json.loads(embedstream("search", "anything", "-k", "10", *common, "--json").stdout)
            return doc_id in [r["doc_id"] for r in results]

        _wait_for(lambda: found("first.md"), 60, "first.md to be searchable")
        (docs / "second.md").write_text("A second document, added while the watcher runs.")
        _wait_for(lambda: found("second.md"), 60, "second.md to be searchable")
        (docs / "first.md").unlink()
        _wait_for(lambda: not found("first.md"), 60, "first.md to disappear")
        status = json.loads(embedstream("status", "--state-dir", str(state), "--json").stdout)
        assert status["versions"][0]["documents"] == 1
    finally:
        watcher.send_signal(signal.SIGTERM)
        try:
            _, stderr = watcher.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            watcher.kill()
            raise
    assert watcher.returncode == 0, stderr
    assert "stopped cleanly" in stderr
    assert not (state / "watch.json").exists()
