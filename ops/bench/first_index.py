"""First-index wall time of ``embedstream index`` as a whole process, A B A B.

A is another checkout of the code (``--baseline ROOT``, e.g. ``git archive HEAD pipeline
connectors | tar -x -C /tmp/base``), B this one; each run indexes the same folder into a
fresh state dir (cold cache, no ONNX artefact). The corpus is ``--files`` Debian manual
pages (``manpages.py``), one file per page. Prints each wall time, the medians, B/A, and
the load average before and after.

    .venv/bin/python ops/bench/first_index.py --baseline /tmp/base --files 30 --pairs 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from manpages import Params, ensure_corpus  # noqa: E402

CLI = "import sys; from pipeline.cli import main; sys.argv[0] = 'embedstream'; sys.exit(main())"


def write_pages(folder: Path, files: int, pages: int = 200) -> Path:
    corpus = ensure_corpus(REPO / ".cache" / "bench" / f"manpages-{pages}-s7", Params(pages, 7))
    folder.mkdir(parents=True, exist_ok=True)
    for line in list((corpus / "corpus.jsonl").open())[:files]:
        row = json.loads(line)
        (folder / f"{row['_id']}.txt").write_text(row["text"])
    return folder


def index_wall(root: Path, folder: Path, state: Path, env: dict[str, str]) -> tuple[float, dict[str, object]]:
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", CLI, "index", str(folder), "--state-dir", str(state), "--json"],
        env={**os.environ, **env, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"},
        capture_output=True, text=True, check=True, cwd=root,
    )  # fmt: skip
    wall = time.perf_counter() - started
    return wall, json.loads(out.stdout[out.stdout.index("{") :])


def split(folder: Path, state: Path) -> dict[str, float]:
    """Where a first index goes, in this (fresh) process: model load (in the background;
    how long the first encode waited for it), tokenization, forward passes, store writes."""
    sys.path.insert(0, str(REPO))
    from connectors.filesystem import FilesystemSource
    from pipeline.config.settings import Settings
    from pipeline.observability import NullObserver
    from pipeline.runtime.embedded import EmbeddedPipeline
    from pipeline.runtime.local import index_source

    class Writes(NullObserver):
        seconds = 0.0

        def upserted(self, seconds: float, points: int, deleted: int) -> None:
            self.seconds += seconds

    writes = Writes()
    settings = Settings.load(state_dir=state)
    with EmbeddedPipeline(settings, observer=writes) as pipeline:
        checkpoint = state / "checkpoint.json"
        summary = index_source(pipeline, FilesystemSource(folder, checkpoint, name="bench"))
        timings: dict[str, float] = dict(getattr(pipeline.encoder, "timings", {}))
        dtype = str(getattr(pipeline.encoder, "compute_dtype", "?"))
    return {
        **timings, "pass_s": summary.seconds, "writes_s": writes.seconds, "encoded": summary.encoded,
        "bf16": float(dtype == "bfloat16"),
    }  # fmt: skip


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--split":
        print(json.dumps(split(Path(sys.argv[2]), Path(sys.argv[3]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="root of the A checkout")
    parser.add_argument("--files", type=int, default=30)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--env-a", action="append", default=[], help="NAME=VALUE for A runs")
    parser.add_argument("--env-b", action="append", default=[], help="NAME=VALUE for B runs")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="embedstream-first-"))
    folder = write_pages(work / "pages", args.files)
    size = sum(p.stat().st_size for p in folder.iterdir())
    envs = {"A": dict(e.split("=", 1) for e in args.env_a), "B": dict(e.split("=", 1) for e in args.env_b)}
    roots = {"A": args.baseline.resolve(), "B": REPO}
    load_before = os.getloadavg()[0]
    walls: dict[str, list[float]] = {"A": [], "B": []}
    passes: dict[str, list[float]] = {"A": [], "B": []}
    for number in range(args.pairs):
        for side in "AB":
            wall, summary = index_wall(roots[side], folder, work / f"state-{side}-{number}", envs[side])
            walls[side].append(wall)
            passes[side].append(float(summary["seconds"]))  # type: ignore[arg-type]
            chunks = summary["chunks"]
            print(
                f"  {side} run {number}: {wall:.2f} s wall, {summary['seconds']} s pass, {chunks}", flush=True
            )
    print(
        f"{args.files} files, {size / 1000:.0f} KB; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    )
    for side in "AB":
        print(
            f"  {side}: wall median {statistics.median(walls[side]):.2f} s, pass median {statistics.median(passes[side]):.2f} s"
        )
    ratios = sorted(b / a for a, b in zip(walls["A"], walls["B"], strict=True))
    print(
        f"  B/A wall per pair: {', '.join(f'{r:.2f}' for r in ratios)} (median {statistics.median(ratios):.2f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
