"""The model card ``embedstream tune`` writes as ``README.md`` beside the tuned model:
where it comes from, what it was trained on and how, and what it scores before and after.
(``*.md`` files are not part of a model's fingerprint: rewriting the card orphans no cache.)"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pipeline.versions.evaluation import EvalReport

if TYPE_CHECKING:
    from pipeline.runtime.tune import TuneReport


def model_card(report: TuneReport) -> str:
    params, stats, run = report.params, report.negatives, report.training
    name = report.out.rstrip("/").rsplit("/", 1)[-1]
    rules = ", ".join(f"{n} {rule}" for rule, n in sorted(report.pairs.by_rule.items()))
    margin = "-" if stats.mean_margin is None else f"{stats.mean_margin:.4f}"
    lines = [
        f"# {name}",
        "",
        f"`{report.base_model}` fine-tuned by `embedstream tune` on the documents of index "
        f"`{report.index}` (live version {report.base_version}).",
        "",
        "| | |",
        "|---|---|",
        f"| base model | `{report.base_model}` |",
        f"| base fingerprint | `{report.base_fingerprint}` |",
        f"| this model's fingerprint | `{report.fingerprint}` |",
        f"| pairs | {report.train_pairs} for training, {report.held_out} held out "
        f"({report.pairs.kind}: {rules}; {report.pairs.documents} documents read) |",
        f"| data digest | `{report.data_digest}` (sha256 of the training rows) |",
        f"| hard negatives | {stats.mined} mined from {report.base_version} (top {stats.depth} documents, "
        f"ceiling {stats.ceiling:g} x the positive's score), {stats.near_duplicates} skipped as "
        f"near-duplicates, {stats.filled} filled with other positives; mean margin {margin} |",
        f"| loss | {report.loss} |",
        f"| hyperparameters | {params.epochs} epoch(s), batch size {params.batch_size}, learning rate "
        f"{params.learning_rate:g}, warmup ratio {params.warmup_ratio:g}, {params.negatives} negative(s) "
        f"per query, seed {params.seed}, held-out share {params.held_out:g} |",
        f"| training | {run.steps} steps, {run.seconds:.1f} s on {run.device} ({run.precision}), "
        f"final loss {run.loss:.4f} |",
        "",
        "## Held-out evaluation",
        "",
        f"{report.held_out} queries of documents kept out of training, each searched exactly among "
        "the positives of every pair (one relevant document per query).",
        "",
        *comparison_table(report.before, report.after),
        "",
        "## Use",
        "",
        "```bash",
        f"embedstream migrate start {report.index} --model {report.out}",
        "embedstream index PATH                       # builds the new version",
    ]
    if report.eval_files:
        files = f"--queries {report.out}/tune/queries.jsonl --qrels {report.out}/tune/qrels.tsv"
        lines.append(f"embedstream eval {files} --compare v1 v2")
    lines += [f"embedstream migrate promote {report.index}", "```", ""]
    return "\n".join(lines)


def comparison_table(before: Sequence[EvalReport], after: Sequence[EvalReport]) -> list[str]:
    """Markdown rows: per size, base and tuned nDCG@10, MRR@10, Recall@10 and the change."""
    rows = [
        "| dims | nDCG@10 base | nDCG@10 tuned | change | MRR@10 base | MRR@10 tuned "
        "| R@10 base | R@10 tuned |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for base, tuned in zip(before, after, strict=True):
        dims = base.label.rsplit(" ", 1)[-1]
        change = tuned.ndcg_at_10 - base.ndcg_at_10
        rows.append(
            f"| {dims} | {base.ndcg_at_10:.4f} | {tuned.ndcg_at_10:.4f} | {change:+.4f} | "
            f"{base.mrr_at_10:.4f} | {tuned.mrr_at_10:.4f} | "
            f"{base.recall_at_10:.4f} | {tuned.recall_at_10:.4f} |"
        )
    return rows
