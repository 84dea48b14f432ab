"""What a user waits for at a terminal: one-shot ``embedstream`` commands, process start included.

* small update: an 80-document folder of real text is indexed once, then a few times over
  a paragraph is appended to 3 documents (3 new chunks) and ``embedstream index`` runs;
* one-shot search: ``embedstream search`` for 20 queries on that index;
* no-op re-index: ``embedstream index`` over 1,000 unchanged files.

Every figure is the wall time of a fresh process, as a shell sees it. The first small
update after a first index is reported apart: it may build the ONNX artefact for small
calls (once per model and state dir).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from corpus import write_corpus

QUERIES = (
    "my door sensor battery drains too fast", "how do consumer groups rebalance partitions",
    "restart the service after a configuration change", "what happens when the broker is down",
    "how to rotate credentials", "where are logs written", "backup and restore the index",
    "why is search slow", "which file types are indexed", "how to change the embedding model",
    "retry with backoff", "dead letter queue replay", "memory usage grows over time",
    "upgrade to a new version", "permissions for the state directory", "set up monitoring alerts",
    "schedule a nightly index", "delete a document from the index", "filter search by file type",
    "compare two index versions",
)  # fmt: skip


def command() -> list[str]:
    """The installed console script when there is one, as users run it."""
    script = Path(sys.executable).with_name("embedstream")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "pipeline.cli"]


def timed(args: list[str], state: Path) -> tuple[float, dict[str, Any] | list[Any]]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    done = subprocess.run(
        [*command(), *args, "--state-dir", str(state), "--json"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"embedstream {args[0]} exited {done.returncode}: {done.stderr[-2000:]}")
    return seconds, json.loads(done.stdout)


def append_paragraph(path: Path, number: int) -> None:
    """One short paragraph at the end: one new chunk, the rest of the document unchanged."""
    with path.open("a") as out:
        out.write(f"\n\nUpdate {number}: consumer groups rebalance partitions when member {number} joins.\n")


def small_updates(work: Path, runs: int = 5) -> dict[str, float]:
    docs = write_corpus(work / "folder", 80, seed=21)
    state = work / "state"
    first_index, _ = timed(["index", str(work / "folder")], state)
    # A first index leaves the ONNX small-call export to a detached background process (it is
    # never inside the index's own wall time): wait for it, as a user's next command would
    # mostly find it done.
    waited = wait_for_small_backend(state)
    seconds, encoded = [], []
    for run in range(runs + 1):
        for path in docs[run * 3 : run * 3 + 3]:
            append_paragraph(path, run)
        wall, summary = timed(["index", str(work / "folder")], state)
        assert isinstance(summary, dict)
        seconds.append(wall)
        encoded.append(summary["chunks"]["encoded"])
    searches = [timed(["search", query], state)[0] for query in QUERIES]
    return {
        "cli_first_index_80_docs_s": first_index,
        "small_backend_background_wait_s": waited,
        "small_update_first_s": seconds[0],
        "small_update_median_s": statistics.median(seconds[1:]),
        "small_update_max_s": max(seconds[1:]),
        "small_update_chunks_encoded": statistics.median(encoded),
        "search_median_s": statistics.median(searches),
        "search_p90_s": sorted(searches)[int(len(searches) * 0.9) - 1],
        "search_queries": len(searches),
    }


def wait_for_small_backend(state: Path, limit_s: float = 180.0) -> float | None:
    """Seconds until the background build published ``models/<fingerprint>/meta.json``; None
    when no build runs (a first index under ``BACKGROUND_BUILD_TOKENS`` leaves the export to the
    first small call, which then shows its cost)."""
    started = time.perf_counter()
    while time.perf_counter() - started < limit_s:
        if any((state / "models").glob("*/meta.json")):
            return time.perf_counter() - started
        if not builder_running(state):
            return None
        time.sleep(0.25)
    return time.perf_counter() - started


def builder_running(state: Path) -> bool:
    """Whether a detached ``build-small-backend`` process for ``state`` is alive (Linux /proc)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue  # the process ended while we looked
        if b"build-small-backend" in args and str(state).encode() in args:
            return True
    return False


def noop_reindex(work: Path, files: int = 1000, runs: int = 3) -> dict[str, float]:
    """1,000 one-paragraph files: indexed once, then re-indexed unchanged."""
    write_corpus(work / "many", files, paragraphs=1, seed=5)
    state = work / "many-state"
    timed(["index", str(work / "many")], state)
    walls, inside = [], []
    for _ in range(runs):
        wall, summary = timed(["index", str(work / "many")], state)
        assert isinstance(summary, dict)
        assert summary["chunks"]["encoded"] == 0, summary
        walls.append(wall)
        inside.append(float(summary["seconds"]))
    return {
        "noop_reindex_files": files,
        "noop_reindex_wall_s": statistics.median(walls),
        "noop_reindex_pass_s": statistics.median(inside),
    }
