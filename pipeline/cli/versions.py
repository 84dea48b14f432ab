"""Index versions on the command line: ``migrate start|status|promote|rollback|gc``,
``index-versions`` and ``eval``. A command works on the store, and with Kafka configured also
on the control topic and consumer groups (:class:`pipeline.runtime.admin.Admin`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, get_args

import typer

from pipeline.cli.app import app, load_settings, migrate_app, run
from pipeline.cli.options import CommonOptions, JsonOpt, takes
from pipeline.cli.render import (
    print_comparison,
    print_created,
    print_gc,
    print_json,
    print_states,
    print_swap,
    print_versions,
    warn_unjudged,
)
from pipeline.config.settings import Settings
from pipeline.core.errors import ConfigError
from pipeline.store import Datatype, Quantization
from pipeline.versions.decide import VersionState
from pipeline.versions.evaluation import EvalReport
from pipeline.versions.gate import QuerySet
from pipeline.versions.spec import IndexVersion

if TYPE_CHECKING:
    from pipeline.runtime.admin import Admin
    from pipeline.versions.apply import Swap

T = TypeVar("T")


def _on_index(common: CommonOptions, call: Callable[[Admin], T]) -> T:
    """``call(admin)`` on the index the options name; errors become exit codes (see run)."""

    def action() -> T:
        with _admin(load_settings(common)) as admin:
            return call(admin)

    return run(action)


@contextmanager
def _admin(settings: Settings, *, kafka: bool | None = None) -> Iterator[Admin]:
    """The index's versions in the store; with Kafka configured (--bootstrap,
    EMBEDSTREAM_KAFKA__BOOTSTRAP or kafka.bootstrap) also its control topic and groups."""
    from pipeline.runtime.admin import Admin

    if kafka is None:
        kafka = "bootstrap" in settings.kafka.model_fields_set
    with Admin.open(settings, kafka=kafka) as admin:
        yield admin


def _one_of(choices: tuple[str, ...]) -> Callable[[str | None], str | None]:
    """An option's callback: its value is one of ``choices`` (else a usage error, exit 2)."""

    def check(value: str | None) -> str | None:
        if value is not None and value not in choices:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}")
        return value

    return check


def _known_index(admin: Admin) -> None:
    """The index has a version (in the store or, with Kafka, registered): a typo in INDEX
    must not become a new index."""
    from pipeline.runtime.admin import list_versions

    if not list_versions(admin):
        where = admin.settings.store.url or admin.settings.state_dir
        msg = (
            f"no index {admin.name!r} in {where}: `migrate start` builds a new version beside an "
            f"existing index; check the name (and --state-dir), or create it with "
            f"`embedstream index PATH --index {admin.name}`"
        )
        raise ConfigError(msg)


@migrate_app.command("start")
@takes("target", "config", "state_dir", "index", "bootstrap")
def migrate_start(
    common: CommonOptions,
    new_model: Annotated[
        str | None,
        typer.Option("--model", metavar="MODEL", help="The new version's model (default: the live one's)."),
    ] = None,
    dims: Annotated[
        int | None, typer.Option(metavar="D", min=8, help="Matryoshka truncation (default: full or as live).")
    ] = None,
    datatype: Annotated[
        str | None,
        typer.Option(metavar="TYPE", help="float32, float16 or uint8.", callback=_one_of(get_args(Datatype))),
    ] = None,
    quantization: Annotated[
        str | None,
        typer.Option(
            metavar="KIND", help="none, int8, binary or product.", callback=_one_of(get_args(Quantization))
        ),
    ] = None,
    reencode: Annotated[
        bool, typer.Option("--reencode", metavar="", help="Encode again even for the live version's model.")
    ] = False,
) -> None:
    """Create version N+1 beside the live one; it backfills, then follows every change."""
    from pipeline.runtime.admin import StorageChoice, next_steps, start

    def begin(admin: Admin) -> tuple[IndexVersion, list[str]]:
        _known_index(admin)
        spec = start(admin, StorageChoice(new_model, dims, datatype, quantization), reencode=reencode)
        return spec, next_steps(admin, spec)

    print_created(*_on_index(common, begin))


@migrate_app.command("status")
@takes("target", "config", "state_dir", "index", "bootstrap")
def migrate_status(
    common: CommonOptions,
    evaluate: Annotated[
        bool,
        typer.Option(
            "--eval/--no-eval", metavar="", help="Score each version on index.eval_queries/eval_qrels."
        ),
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Every version: role, documents and points, lag, and evaluation scores."""
    from pipeline.runtime.admin import states

    def rows_of(admin: Admin) -> list[dict[str, Any]]:
        return [_state_row(state) for state in states(admin, evaluate=evaluate)]

    rows = _on_index(common, rows_of)
    for row in rows:
        if row["eval"] is not None:
            warn_unjudged(f"v{row['version']}", row["eval"]["queries"], row["eval"]["skipped"])
    if as_json:
        print_json(rows)
        return
    print_states(rows)


def _state_row(state: VersionState) -> dict[str, Any]:
    from pipeline.runtime.admin import role

    version = state.version
    return {
        "version": version.version,
        "state": role(state.lifecycle, live=state.live, stored=True),
        "model": version.model or version.fingerprint,
        "dims": version.dims,
        "datatype": version.datatype,
        "quantization": version.quantization,
        "documents": state.documents,
        "points": state.points,
        "lag": "?" if state.lag is None else state.lag,
        "pending": list(state.pending),
        "eval": asdict(state.evaluation) if state.evaluation else None,
    }


PromotedOpt = Annotated[
    int | None, typer.Option("--version", min=1, help="Version to promote (default: newest not live).")
]
ForceOpt = Annotated[
    bool, typer.Option("--force", metavar="", help="Promote even if a gate refuses (logged).")
]
RollbackToOpt = Annotated[
    int | None, typer.Option("--to", min=1, help="Version (default: the one live before).")
]


@migrate_app.command("promote")
@takes("target", "config", "state_dir", "index", "bootstrap")
def migrate_promote(
    common: CommonOptions,
    version: PromotedOpt = None,
    force: ForceOpt = False,
) -> None:
    """Move the alias to a version that caught up, holds every document and evaluates as well."""
    from pipeline.runtime.admin import promote_version

    swap = _on_index(common, lambda admin: promote_version(admin, version, force=force))
    print_swap(swap, "promoted")


@migrate_app.command("rollback")
@takes("target", "config", "state_dir", "index", "bootstrap")
def migrate_rollback(
    common: CommonOptions,
    to: RollbackToOpt = None,
) -> None:
    """Move the alias back to the version the live one replaced: one atomic call."""
    from pipeline.runtime.admin import list_versions, rollback_version

    def roll_back(admin: Admin) -> Swap:
        known = [row["version"] for row in list_versions(admin)]
        if to is not None and to > max(known, default=0):  # numbers only grow: never created
            shown = ", ".join(str(n) for n in known) or "none"
            raise ConfigError(f"index {admin.name!r} has no version {to} (versions: {shown})")
        return rollback_version(admin, to)

    swap = _on_index(common, roll_back)
    print_swap(swap, "rolled back to")


@migrate_app.command("gc")
@takes("target", "config", "state_dir", "index", "bootstrap")
def migrate_gc(
    common: CommonOptions,
    abandon: Annotated[
        list[int] | None,
        typer.Option("--abandon", metavar="N", min=1, help="Also drop this never-live version."),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", metavar="", help="Only say what would go.")] = False,
) -> None:
    """Drop versions no alias points to, unaliased over index.gc_retention_hours ago."""
    from pipeline.runtime.admin import gc

    choice = _on_index(common, lambda admin: gc(admin, abandon or [], dry_run=dry_run))
    print_gc(choice, dry_run=dry_run)


@app.command("index-versions")
@takes("target", "config", "state_dir", "index", "bootstrap")
def index_versions(
    common: CommonOptions,
    as_json: JsonOpt = False,
) -> None:
    """Every version of the index: role, model, dims, datatype, quantization, chunker."""
    from pipeline.runtime.admin import list_versions

    rows = _on_index(common, list_versions)
    if as_json:
        print_json(rows)
        return
    print_versions(rows)


@app.command("eval")
@takes("config", "state_dir")
def eval_index(
    common: CommonOptions,
    queries: Annotated[Path, typer.Option(metavar="Q.jsonl", help="BEIR queries (one {_id, text} a line).")],
    qrels: Annotated[Path, typer.Option(metavar="QRELS.tsv", help="BEIR qrels: query-id, corpus-id, score.")],
    target: Annotated[
        str | None, typer.Option("--index", metavar="NAME[@vN]", help="Index, and version (default: live).")
    ] = None,
    compare: Annotated[
        tuple[str, str] | None,
        typer.Option(metavar="vA vB", help="Two versions side by side (the first is the baseline)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """nDCG@10, MRR@10, Recall@10/@100, latency p50/p99 and bytes per vector of a version."""

    def action() -> list[EvalReport]:
        from pipeline.runtime.admin import evaluate_versions, parse_target

        name, number = parse_target(target) if target else (None, None)
        numbers = [parse_target(v)[1] for v in compare] if compare else [number]
        settings = load_settings(replace(common, index=name))
        with _admin(settings, kafka=False) as admin:
            return evaluate_versions(admin, numbers, QuerySet.load(queries, qrels))

    reports = run(action)
    for report in reports:
        warn_unjudged(report.label, report.queries, report.skipped)
    if as_json:
        print_json([asdict(r) for r in reports])
        return
    print_comparison(reports)
