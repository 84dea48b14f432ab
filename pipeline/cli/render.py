"""What the commands print: results on stdout (``out``), progress and problems on stderr
(``err``), as rich markup, tables and progress bars; ``--json`` output through :func:`print_json`.

Text that comes from users or the index goes through :func:`shown`: rich would take
``[index]`` for markup, and a terminal would obey an escape sequence in a document or take a
newline in a file name for the end of a line. ``--json`` output keeps the real text.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from pipeline.versions.evaluation import EvalReport, format_comparison

if TYPE_CHECKING:
    from connectors.jsonl import InvalidLine
    from pipeline.bus import TopicSpec
    from pipeline.runtime.backfill import Backfilled
    from pipeline.runtime.local import IndexSummary
    from pipeline.versions.apply import Swap
    from pipeline.versions.decide import GcChoice
    from pipeline.versions.search import SearchAnswer
    from pipeline.versions.spec import IndexVersion

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

Row = dict[str, Any]  # one version as --json prints it
_SPEC_COLUMNS = ("version", "state", "model", "dims", "datatype", "quantization")
STATE_COLUMNS = (*_SPEC_COLUMNS, "documents", "points", "lag")
VERSION_COLUMNS = (*_SPEC_COLUMNS, "chunking", "vectors_from")
NO_VERSIONS = (
    "this index has no version yet: `embedstream index PATH` creates the first one "
    "(check --state-dir and --index)"
)


# C0 and C1 control characters, DEL included: shown as escapes, never sent to the terminal.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def shown(text: object) -> str:
    """User or index text for the terminal: control characters as Python escapes (``\\x1b``,
    ``\\n``), then rich markup escaped."""
    return escape(_CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), str(text)))


def print_json(value: object) -> None:
    """Strict JSON (RFC 8259): a float that is not a number (a mean over no query) is null."""
    out.print_json(json.dumps(_finite(value), allow_nan=False))


def _finite(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def print_error(label: str, exc: Exception) -> None:
    # One line per problem (a ConfigError may carry several), shown safely: messages quote
    # user text such as "[index]" or a file name.
    for line in str(exc).splitlines() or [type(exc).__name__]:
        err.print(f"[red]{label}:[/] {shown(line)}")


def print_table(table: Table) -> None:
    """A table on stdout; piped (``status | cat``), at its natural width, not cut to 80 columns."""
    if out.is_terminal:
        out.print(table)
    else:
        Console(soft_wrap=True, width=1000).print(table)


@contextmanager
def progress_bar(enabled: bool) -> Iterator[Callable[[float, int | None], None] | None]:
    """A bar on stderr, when it is a terminal, that hears (documents done, total if known)."""
    if not enabled or not err.is_terminal:
        yield None
        return
    columns = (
        TextColumn("indexing"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
        TextColumn("{task.fields[rate]} docs/s"), TimeElapsedColumn(), TimeRemainingColumn(),
    )  # fmt: skip
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("index", total=None, rate="-")

        def update(done: float, total: int | None) -> None:
            elapsed = bar.tasks[0].elapsed or 0.0
            rate = f"{done / elapsed:.1f}" if elapsed > 0 else "-"
            bar.update(task, completed=done, total=total, rate=rate)

        yield update


# --------------------------------------------------------------------------- index, watch


def summary_line(summary: IndexSummary) -> str:
    docs = summary.as_json()["docs"]
    shown = ", ".join(f"{v} {k}" for k, v in docs.items() if v or k != "stale")
    return f"docs: {shown}  chunks: {summary.encoded} encoded, {summary.reused} reused"


def print_details(summary: IndexSummary) -> None:
    if summary.skipped:
        out.print("skipped: " + ", ".join(f"{n} {r}" for r, n in sorted(summary.skipped.items())))
    for letter in summary.dead_letters:
        key, message = shown(letter["key"]), shown(str(letter.get("error.message")))
        out.print(f"[yellow]dead-lettered[/] {key}: {message} (retried next pass; `embedstream dlq list`)")


def print_indexed(label: str, summary: IndexSummary, invalid: Sequence[InvalidLine]) -> None:
    out.print(f"[bold]indexed[/] {shown(label)} in {summary.seconds:.1f}s  " + summary_line(summary))
    print_details(summary)
    for line in invalid:
        out.print(f"[yellow]invalid line {line.line}[/]: {shown(line.error)} (dead-lettered)")


def print_backfills(backfilled: Sequence[Backfilled]) -> None:
    for done in backfilled:
        err.print(
            f"backfilled {shown(done.label)} from source {shown(done.source)}: {done.documents} documents, "
            f"{done.encoded} chunks encoded"
        )


def print_watching(path: Path, interval: float, url: str) -> None:
    err.print(f"watching {shown(str(path))} (every {interval}s); queries served at {url}; Ctrl-C to stop")


def pass_reporter() -> Callable[[IndexSummary], None]:
    """What ``watch`` says of its passes on stderr: the first, then each that changed something."""
    passes = 0

    def report(summary: IndexSummary) -> None:
        nonlocal passes
        passes += 1
        label = "first pass" if passes == 1 else "updated"
        err.print(f"{label} in {summary.seconds:.1f}s: " + summary_line(summary))
        print_details(summary)

    return report


def print_results(answer: SearchAnswer) -> None:
    if not answer.results:
        out.print(shown(answer.empty or "no results"))
    for rank, result in enumerate(answer.results, 1):
        snippet = shown(" ".join(str(result["text"]).split())[:200])
        # The document key, source/doc_id: one path in two sources is two documents.
        key = shown(f"{result.get('source', '?')}/{result['doc_id']}")
        out.print(f"[bold]{rank}. {key}[/]  [dim]score {result['score']:.3f}[/]\n   {snippet}")


def print_status(result: dict[str, Any]) -> None:
    if result.get("missing"):
        out.print(shown(result["missing"]))
        return
    columns = ("collection", "live", "model", "dims", "datatype", "quantization", "documents", "points")
    table = Table(title=shown(f"index {result['alias']!r} → {result['live'] or '(no live version)'}"))
    for column in columns:
        table.add_column(column)
    for version in result["versions"]:
        table.add_row(*(shown(str(version[c])) for c in columns))
    print_table(table)


# --------------------------------------------------------------------------- daemons, dlq


def print_topics(specs: Sequence[TopicSpec]) -> None:
    for spec in specs:
        kind = "compacted" if spec.compacted else "delete"
        out.print(f"{spec.name}: {spec.partitions} partitions, replication {spec.replication}, {kind}")


def print_letters(letters: Sequence[dict[str, str]]) -> None:
    if not letters:
        out.print("the DLQ is empty")
    for letter in letters:
        where = f"{letter['original_topic']}[{letter['original_partition']}]@{letter['original_offset']}"
        out.print(
            f"[bold]{shown(letter['key'][:200])}[/] {letter['reason']} in {letter['stage']} "
            f"({shown(where)}): {shown(letter['message'])}"
        )


# --------------------------------------------------------------------------- index versions


def print_created(spec: IndexVersion, steps: Sequence[str]) -> None:
    source = f" (reads the vectors of v{spec.vectors_from}: nothing to encode)" if spec.vectors_from else ""
    model = shown(spec.model or spec.fingerprint)
    out.print(
        f"[bold]created[/] {shown(spec.label)} ({shown(spec.collection)}): {model}, "
        f"{spec.dims} dims, {spec.datatype}, quantization {spec.quantization}{source}"
    )
    for step in steps:
        out.print(f"next: {shown(step)}")


def print_states(rows: Sequence[Row]) -> None:
    """``migrate status``: each version with its evaluation scores and pending sources."""
    if not rows:
        out.print(NO_VERSIONS)
        return
    table = Table(*STATE_COLUMNS, "nDCG@10", "R@10", "pending")
    for row in rows:
        scores = row["eval"] or {}
        table.add_row(
            *_cells(row, STATE_COLUMNS),
            _score(scores.get("ndcg_at_10")),
            _score(scores.get("recall_at_10")),
            shown(", ".join(row["pending"]) or "-"),
        )
    print_table(table)


def _score(value: float | None) -> str:
    """A score cell: "-" when there is none (no query set, or every query was skipped)."""
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"


def print_versions(rows: Sequence[Row]) -> None:
    """``index-versions``: each version's spec and role."""
    if not rows:
        out.print(NO_VERSIONS)
        return
    table = Table(*VERSION_COLUMNS)
    for row in rows:
        table.add_row(*_cells(row, VERSION_COLUMNS))
    print_table(table)


def _cells(row: Row, columns: Sequence[str]) -> list[str]:
    """Table cells: a model directory as its last two parts (--json has the whole path)."""
    cells = []
    for column in columns:
        value = str(row[column])
        if column == "model" and value.startswith("/"):
            value = "/".join(Path(value).parts[-2:])
        cells.append(shown(value))
    return cells


def print_swap(swap: Swap, verb: str) -> None:
    for reason in swap.forced:
        err.print(f"[yellow]forced past:[/] {shown(reason)}")
    before = swap.before.collection if swap.before else "(nothing)"
    after = swap.after
    out.print(f"[bold]{verb}[/] {shown(after.label)}: alias {after.name} {before} -> {after.collection}")


def print_gc(choice: GcChoice, *, dry_run: bool) -> None:
    verb = "would drop" if dry_run else "dropped"
    for version in choice.drop:
        out.print(f"[bold]{verb}[/] {shown(version.collection)}")
    for version, why in choice.keep:
        out.print(f"kept {shown(version.collection)}: {shown(why)}")


def warn_unjudged(label: str, judged: int, skipped: int) -> None:
    """Scores over no query are not scores: say so (they print as null / "-")."""
    if judged == 0:
        err.print(
            f"[yellow]warning:[/] {shown(label)}: all {skipped} queries were skipped: none of their ids "
            "has a relevant document in the qrels file (check that the two files belong together)"
        )


def print_comparison(reports: Sequence[EvalReport]) -> None:
    out.print(escape(format_comparison(reports)))
