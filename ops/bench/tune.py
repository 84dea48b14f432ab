"""Domain adaptation on a corpus no one here wrote: all-MiniLM-L6-v2 before and after
``embedstream tune`` on the Debian manual pages.

The pages are those of the quantization bench (``manpages.py``: rendered by man-db, the NAME
section and every verbatim copy of the description taken out of the body). Each becomes a
text file as a manual page starts, ``NAME`` then ``ls - list directory contents``, then the
body cut at ``--max-chars``, and the folder goes through the product, as a user runs it:

1. ``embedstream index DOCS`` (embedded mode, the real model, ``HF_HUB_OFFLINE=1``);
2. ``embedstream tune --out MODEL --json``: it derives each page's pair from its NAME line
   (the description is the query, the page after NAME the positive), holds out a seeded
   share of the *pages*, mines hard negatives from the index, trains, and scores the base and
   the tuned model on the held-out pages' queries, each searched exactly among every page;
3. this script prints those scores (nDCG@10, MRR@10 at full size and, with
   ``--matryoshka``, at each truncated size: the tuned model truncated to 128 against the base
   truncated to 128), the margins, and the times.

    .venv/bin/python ops/bench/tune.py --pages 400 --epochs 3               # ~10 min on 2 CPUs
    .venv/bin/python ops/bench/tune.py --pages 200 --no-matryoshka
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from manpages import Params, cut, ensure_corpus  # noqa: E402

MATRYOSHKA = "384,256,128,64"


def write_pages(corpus: Path, docs: Path, max_chars: int) -> int:
    """One ``<page>.txt`` per page: NAME section, then the body (cut at ``max_chars``)."""
    descriptions = {}
    for line in (corpus / "queries.jsonl").open():
        row = json.loads(line)
        descriptions[str(row["_id"]).removeprefix("q:")] = str(row["text"])
    docs.mkdir(parents=True)
    count = 0
    for line in (corpus / "corpus.jsonl").open():
        row = json.loads(line)
        name = str(row["title"]).rsplit("(", 1)[0]
        text = f"NAME\n{name} - {descriptions[row['_id']]}\n\n{cut(str(row['text']), max_chars)}\n"
        (docs / f"{row['_id']}.txt").write_text(text)
        count += 1
    return count


def embedstream(args: Sequence[str], state: Path) -> tuple[str, float]:
    command = [str(REPO / ".venv" / "bin" / "embedstream"), *args, "--state-dir", str(state)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False, env={**os.environ})
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:2])} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout, seconds


def run(
    pages: int = 400,
    seed: int = 7,
    max_chars: int = 3000,
    epochs: int = 3,
    matryoshka: str | None = MATRYOSHKA,
    extra: Sequence[str] = (),
) -> dict[str, Any]:
    corpus = ensure_corpus(REPO / ".cache" / "bench" / f"manpages-{pages}-s{seed}", Params(pages, seed))
    work = Path(tempfile.mkdtemp(prefix="embedstream-tune-"))
    try:
        count = write_pages(corpus, work / "docs", max_chars)
        _, index_s = embedstream(["index", str(work / "docs")], work / "state")
        args = ["tune", "--out", str(work / "tuned"), "--epochs", str(epochs), "--json", *extra]
        if matryoshka:
            args += ["--matryoshka", matryoshka]
        stdout, tune_s = embedstream(args, work / "state")
        report = json.loads(stdout)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["bench"] = {"pages": count, "index_s": index_s, "tune_s": tune_s, "max_chars": max_chars}
    print_report(report)
    return report


def print_report(report: dict[str, Any]) -> None:
    bench, stats, trained, params = report["bench"], report["negatives"], report["training"], report["params"]
    print(
        f"embedstream tune bench: {bench['pages']} Debian manual pages (bodies cut at {bench['max_chars']} "
        f"characters), {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"  index (all-MiniLM-L6-v2, CPU)                {bench['index_s']:.1f} s")
    print(
        f"  pairs (NAME line -> page)                    {report['train_pairs']} training, "
        f"{report['held_out']} held-out pages (seed {params['seed']})"
    )
    margin = "-" if stats["mean_margin"] is None else f"{stats['mean_margin']:.3f}"
    print(
        f"  hard negatives                               {stats['mined']} mined, "
        f"{stats['near_duplicates']} near-duplicates skipped, {stats['filled']} filled; mean margin {margin}"
    )
    print(
        f"  training                                     {trained['steps']} steps, {trained['seconds']:.1f} s on "
        f"{trained['device']} ({report['loss']}, {params['epochs']} epochs, batch {params['batch_size']}, "
        f"lr {params['learning_rate']:g})"
    )
    print(f"  tune command, wall                           {bench['tune_s']:.1f} s")
    print(f"  held-out queries ({report['before'][0]['queries']}), exact search among all pages:")
    print("    dims   nDCG@10 base  tuned   change    MRR@10 base  tuned   change")
    for base, tuned in zip(report["before"], report["after"], strict=True):
        dims = base["label"].split()[-1]
        print(
            f"    {dims:>4}   {base['ndcg_at_10']:.4f}       {tuned['ndcg_at_10']:.4f}  "
            f"{tuned['ndcg_at_10'] - base['ndcg_at_10']:+.4f}   {base['mrr_at_10']:.4f}       "
            f"{tuned['mrr_at_10']:.4f}  {tuned['mrr_at_10'] - base['mrr_at_10']:+.4f}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=400)
    parser.add_argument("--seed", type=int, default=7, help="the page sample's seed (manpages.py)")
    parser.add_argument("--max-chars", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--matryoshka", default=MATRYOSHKA)
    parser.add_argument("--no-matryoshka", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the tune report here")
    args, extra = parser.parse_known_args(argv)  # anything else goes to `embedstream tune`
    report = run(
        args.pages,
        args.seed,
        args.max_chars,
        args.epochs,
        None if args.no_matryoshka else args.matryoshka,
        extra,
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
