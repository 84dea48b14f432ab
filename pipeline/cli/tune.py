"""``embedstream tune``: fine-tune the index's model on its own documents, with hard
negatives mined from the live version; ``migrate start --model DIR`` and the promote gate
then decide whether it goes live (:mod:`pipeline.runtime.tune`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pipeline.cli.app import app, load_settings, run
from pipeline.cli.options import CommonOptions, JsonOpt, takes
from pipeline.cli.render import err, out, print_json, shown

if TYPE_CHECKING:
    from pipeline.runtime.tune import TuneReport
    from pipeline.versions.evaluation import EvalReport


def _dims(value: str | None) -> str | None:
    """``--matryoshka 384,256,128,64``: sizes above 0, comma-separated (else exit 2)."""
    if value is not None:
        parts = [p.strip() for p in value.split(",")]
        if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise typer.BadParameter(f"{value!r}: expected sizes such as 384,256,128,64")
    return value


def _fraction(value: float) -> float:
    if not 0 < value < 1:
        raise typer.BadParameter(f"{value:g} is not a share between 0 and 1")
    return value


@app.command("tune")
@takes("target", "config", "state_dir", "index")
def tune_command(
    common: CommonOptions,
    out_dir: Annotated[
        Path, typer.Option("--out", metavar="DIR", help="New folder for the tuned model (must not exist).")
    ],
    pairs: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE.jsonl", help='{"query", "positive"} a line (default: derived from the documents).'
        ),
    ] = None,
    epochs: Annotated[int, typer.Option(metavar="N", min=1, help="Passes over the training pairs.")] = 1,
    matryoshka: Annotated[
        str | None,
        typer.Option(metavar="DIMS", help="Also train truncated sizes, e.g. 384,256,128,64.", callback=_dims),
    ] = None,
    negatives: Annotated[int, typer.Option(metavar="N", min=0, max=8, help="Hard negatives per query.")] = 1,
    batch_size: Annotated[int, typer.Option(metavar="N", min=2, help="Pairs per training step.")] = 16,
    learning_rate: Annotated[
        float, typer.Option(metavar="LR", min=1e-8, max=1.0, help="Peak learning rate.")
    ] = 2e-5,
    held_out: Annotated[
        float,
        typer.Option(
            metavar="SHARE", help="Share of documents held out for the evaluation.", callback=_fraction
        ),
    ] = 0.2,
    seed: Annotated[
        int, typer.Option(metavar="N", help="Seeds the split, the sampling and the training.")
    ] = 42,
    as_json: JsonOpt = False,
) -> None:
    """Fine-tune the index's model on its own documents; `migrate start --model DIR` takes it live."""
    if out_dir.exists():
        raise typer.BadParameter(
            f"{out_dir} already exists: tune never writes over a folder", param_hint="--out"
        )

    def action() -> TuneReport:
        from pipeline.runtime.tune import TuneParams, tune

        settings = load_settings(common)
        dims = tuple(int(p) for p in matryoshka.split(",")) if matryoshka else ()
        params = TuneParams(
            epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, negatives=negatives,
            held_out=held_out, seed=seed, matryoshka=dims,
        )  # fmt: skip
        return tune(settings, out_dir, pairs, params)

    report = run(action)
    if as_json:
        print_json(report.as_json())
        return
    _print_report(report)


def _print_report(report: TuneReport) -> None:
    source, stats, trained = report.pairs, report.negatives, report.training
    rules = ", ".join(f"{n} from a {rule}" for rule, n in sorted(source.by_rule.items()))
    if source.kind != "derived":
        rules = f"from {shown(source.kind)}"
    elif source.without_structure:
        rules += f"; {source.without_structure} documents without one"
    out.print(f"pairs: {report.train_pairs} for training, {report.held_out} held out ({rules})")
    margin = "-" if stats.mean_margin is None else f"{stats.mean_margin:.3f}"
    out.print(
        f"hard negatives: {stats.mined} mined from {report.base_version} (top {stats.depth}), "
        f"{stats.near_duplicates} near-duplicates skipped, {stats.filled} filled; mean margin {margin}"
    )
    resumed = f", resumed from {trained.resumed_from}" if trained.resumed_from else ""
    out.print(
        f"trained: {report.loss}, {trained.steps} steps in {trained.seconds:.1f} s on {trained.device} "
        f"({trained.precision}{resumed}), loss {trained.loss:.4f}"
    )
    for base, tuned in zip(report.before, report.after, strict=True):
        out.print(f"held-out {base.label.split()[-1]} dims, {base.queries} queries: {_change(base, tuned)}")
    out.print(f"wrote {shown(report.out)} ({report.fingerprint}; base {report.base_fingerprint})")
    err.print(
        f"next: embedstream migrate start {report.index} --model {shown(report.out)}, then index and promote"
    )


def _change(base: EvalReport, tuned: EvalReport) -> str:
    change = tuned.ndcg_at_10 - base.ndcg_at_10
    return (
        f"nDCG@10 {base.ndcg_at_10:.4f} -> {tuned.ndcg_at_10:.4f} ({change:+.4f}), "
        f"MRR@10 {base.mrr_at_10:.4f} -> {tuned.mrr_at_10:.4f}"
    )
