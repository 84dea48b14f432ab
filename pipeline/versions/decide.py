"""Model migrations, decided: what a new version is, whether it may go live, what gc drops.

Pure functions over plain values (specs, counts, lag, evaluation reports, clock readings);
:mod:`pipeline.versions.apply` gathers those values from the store and the bus and applies the
decisions (one alias call for a swap). DESIGN §5:

* ``start`` plans version N+1 from the live version and what changes (model, dims,
  datatype, quantization); a version of the same model and chunker reads the live
  version's vectors log instead of encoding again (a rebuild).
* ``promote`` is refused, with every reason, unless the candidate has caught up (lag 0),
  holds as many documents as the live version, and its evaluation on the configured query
  set is not worse than the live version's by more than the margin (relative nDCG@10).
* ``rollback`` goes back to the version the live one replaced.
* ``gc`` drops versions the alias left at least the retention period ago; a version that
  was never live is a migration in progress and is kept unless abandoned by name.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pipeline.config.settings import IndexSettings, ModelSettings
from pipeline.core.errors import ConfigError
from pipeline.versions.evaluation import EvalReport
from pipeline.versions.spec import IndexVersion, Lifecycle


@dataclass(frozen=True)
class VersionState:
    """What ``migrate status`` shows of one version, and what the gates read."""

    version: IndexVersion
    live: bool
    documents: int
    points: int
    lag: int | None  # events its consumer groups have not processed (None: unknown)
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    pending: tuple[str, ...] = ()  # embedded mode: sources not yet replayed into it
    evaluation: EvalReport | None = None


@dataclass(frozen=True)
class GcChoice:
    drop: list[IndexVersion]
    keep: list[tuple[IndexVersion, str]]  # and why


def next_number(existing: Iterable[int]) -> int:
    return max(existing, default=0) + 1


def plan_version(
    settings: IndexSettings,
    number: int,
    fingerprint: str,
    full_dims: int,
    *,
    model: ModelSettings,
    chunking: tuple[int, int],
    live: IndexVersion | None,
    reencode: bool = False,
) -> IndexVersion:
    """Version ``number`` as ``settings`` describe it. Same model and chunker as the live
    version (and not ``reencode``): it reads the vectors the live version reads."""
    rebuild = (
        live is not None
        and not reencode
        and live.fingerprint == fingerprint
        and (not live.chunk_tokens or (live.chunk_tokens, live.overlap_tokens) == chunking)
    )
    source = live.vectors_version if rebuild and live is not None else 0
    planned = IndexVersion.plan(
        settings, number, fingerprint, full_dims, model=model, chunking=chunking, vectors_from=source
    )
    if live is not None and _same_storage(planned, live):
        msg = (
            f"v{number} would be identical to the live {live.label} (same model, chunker, dims, "
            "datatype and quantization): change at least one of --model, --dims, --datatype, "
            "--quantization, or pass --reencode to rebuild it from the changes"
        )
        if not reencode:
            raise ConfigError(msg)
    return planned


def _same_storage(a: IndexVersion, b: IndexVersion) -> bool:
    keys = ("fingerprint", "dims", "datatype", "quantization", "chunk_tokens", "overlap_tokens")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


def promotion_refusals(candidate: VersionState, live: VersionState | None, margin: float) -> list[str]:
    """Every reason ``candidate`` may not replace ``live`` yet; empty: it may."""
    label = candidate.version.label
    if candidate.live:
        return [f"{label} is already live"]
    reasons = []
    if candidate.pending:
        reasons.append(f"{label} has not been backfilled from source(s) {', '.join(candidate.pending)} yet")
    if candidate.lag is None:
        reasons.append(f"the lag of {label} is unknown (its consumer groups have not committed yet)")
    elif candidate.lag:
        reasons.append(f"{label} has not caught up: lag {candidate.lag}")
    if live is None:
        return reasons
    if candidate.documents != live.documents:
        reasons.append(
            f"{label} holds {candidate.documents} documents, the live {live.version.label} {live.documents}"
        )
    reasons.extend(_evaluation_refusals(candidate, live, margin))
    return reasons


def _evaluation_refusals(candidate: VersionState, live: VersionState, margin: float) -> list[str]:
    new, old = candidate.evaluation, live.evaluation
    if new is None or old is None:
        return [
            "no evaluation: set index.eval_queries and index.eval_qrels (a BEIR query set) so promote "
            "can compare the versions"
        ]
    floor = old.ndcg_at_10 * (1 - margin)
    if new.ndcg_at_10 < floor:
        loss = 1 - new.ndcg_at_10 / old.ndcg_at_10 if old.ndcg_at_10 else 1.0
        return [
            f"{candidate.version.label} scores nDCG@10 {new.ndcg_at_10:.4f} against {old.ndcg_at_10:.4f} "
            f"for the live {live.version.label}: {loss:.1%} worse, over the margin of {margin:.1%} "
            "(index.eval_margin)"
        ]
    return []


def rollback_target(live: IndexVersion, lifecycle: Lifecycle, existing: Sequence[int], to: int | None) -> int:
    """The version ``rollback`` moves the alias to: ``to``, or the one ``live`` replaced."""
    target = to if to is not None else lifecycle.promoted_from
    if target is None:
        raise ConfigError(
            f"{live.label} did not replace another version: nothing to roll back to (use --to N)"
        )
    if target == live.version:
        raise ConfigError(f"{live.label} is already live")
    if target not in existing:
        raise ConfigError(f"{live.name}@v{target} no longer exists (dropped by `migrate gc`?)")
    return target


def gc_choice(
    states: Sequence[VersionState], now: float, retention_s: float, abandon: Iterable[int] = ()
) -> GcChoice:
    """Which versions ``gc`` drops: unaliased at least ``retention_s`` ago, or abandoned
    (never-live versions named in ``abandon``); never the live one."""
    abandoned = set(abandon)
    choice = GcChoice([], [])
    for state in states:
        version, lifecycle = state.version, state.lifecycle
        if state.live:
            choice.keep.append((version, "live"))
        elif version.version in abandoned:
            choice.drop.append(version)
        elif lifecycle.unaliased_at is None:
            choice.keep.append((version, "never live: a migration in progress (drop it with --abandon N)"))
        elif now - lifecycle.unaliased_at < retention_s:
            hours = (now - lifecycle.unaliased_at) / 3600
            choice.keep.append((version, f"unaliased {hours:.1f} h ago, within the retention period"))
        else:
            choice.drop.append(version)
    return choice
