"""The pure core of migrations: planning a version, promotion gates, rollback target, gc."""

from __future__ import annotations

import dataclasses

import pytest

from pipeline.config.settings import IndexSettings, ModelSettings
from pipeline.core.errors import ConfigError
from pipeline.versions.decide import (
    VersionState,
    gc_choice,
    next_number,
    plan_version,
    promotion_refusals,
    rollback_target,
)
from pipeline.versions.evaluation import EvalReport
from pipeline.versions.spec import IndexVersion, Lifecycle

MODEL = ModelSettings(name="all-MiniLM-L6-v2")


def version(number: int, fingerprint: str = "a@1", **changes: object) -> IndexVersion:
    planned = IndexVersion.plan(IndexSettings(), number, fingerprint, 32, model=MODEL, chunking=(64, 8))
    return dataclasses.replace(planned, **changes)


def report(ndcg: float) -> EvalReport:
    return EvalReport("x", 10, 0, ndcg, ndcg, ndcg, None, 1.0, 2.0)


def state(
    number: int, *, live: bool = False, documents: int = 5, lag: int | None = 0, **extra: object
) -> VersionState:
    return VersionState(version(number), live, documents, documents * 3, lag, **extra)  # type: ignore[arg-type]


def test_the_next_version_number_follows_the_highest_known():
    """Numbers are never reused, even after a gap left by gc."""
    assert next_number([]) == 1
    assert next_number([1, 3]) == 4


def test_a_new_version_of_the_same_model_reuses_the_live_vectors():
    """Same fingerprint and chunker, another quantization: the new version reads the live vectors log."""
    live = version(1)
    planned = plan_version(
        IndexSettings(quantization="binary"), 2, "a@1", 32, model=MODEL, chunking=(64, 8), live=live
    )
    assert (planned.vectors_from, planned.vectors_version, planned.quantization) == (1, 1, "binary")


def test_a_rebuild_of_a_rebuild_reads_the_original_vectors_log():
    """v3 rebuilt from v2, itself rebuilt from v1, reads v1's vectors topic (the one with an embed group)."""
    live = version(2, vectors_from=1)
    planned = plan_version(
        IndexSettings(datatype="float16"), 3, "a@1", 32, model=MODEL, chunking=(64, 8), live=live
    )
    assert planned.vectors_version == 1


def test_another_model_or_chunker_encodes_its_own_vectors():
    """A new model, or the same model with another chunker, gets embed workers of its own."""
    live = version(1)
    other_model = plan_version(IndexSettings(), 2, "b@1", 32, model=MODEL, chunking=(64, 8), live=live)
    other_chunks = plan_version(IndexSettings(), 2, "a@1", 32, model=MODEL, chunking=(128, 8), live=live)
    assert other_model.vectors_from == other_chunks.vectors_from == 0


def test_a_version_identical_to_the_live_one_is_refused_unless_reencoded():
    """Nothing would change: refused, saying what to change, unless --reencode asks for a rebuild."""
    live = version(1)
    with pytest.raises(ConfigError, match="identical"):
        plan_version(IndexSettings(), 2, "a@1", 32, model=MODEL, chunking=(64, 8), live=live)
    again = plan_version(
        IndexSettings(), 2, "a@1", 32, model=MODEL, chunking=(64, 8), live=live, reencode=True
    )
    assert again.vectors_from == 0


def test_a_caught_up_complete_and_as_good_candidate_may_be_promoted():
    """Lag 0, equal document counts, nDCG within the margin: no reason to refuse."""
    live = state(1, live=True, evaluation=report(0.80))
    candidate = state(2, evaluation=report(0.795))
    assert promotion_refusals(candidate, live, margin=0.01) == []


@pytest.mark.parametrize(
    ("candidate", "reason"),
    [
        (state(2, lag=3, evaluation=report(0.8)), "has not caught up: lag 3"),
        (state(2, lag=None, evaluation=report(0.8)), "lag of docs@v2 is unknown"),
        (state(2, documents=4, evaluation=report(0.8)), "holds 4 documents, the live docs@v1 5"),
        (state(2, pending=("fs",), evaluation=report(0.8)), "not been backfilled from source(s) fs"),
        (state(2, evaluation=report(0.70)), "12.5% worse, over the margin of 1.0%"),
        (state(2), "no evaluation"),
    ],
)
def test_each_gate_refuses_with_its_reason(candidate, reason):
    """Lag, document count, backfill, evaluation below the margin, or no evaluation: refused, saying why."""
    live = state(1, live=True, evaluation=report(0.8))
    refusals = promotion_refusals(candidate, live, margin=0.01)
    assert len(refusals) == 1
    assert reason in refusals[0]


def test_rollback_goes_to_the_version_the_live_one_replaced():
    """Without --to, the target is the live version's predecessor; a dropped target is an error."""
    live = version(3)
    assert rollback_target(live, Lifecycle(promoted_from=2), [1, 2, 3], None) == 2
    assert rollback_target(live, Lifecycle(promoted_from=2), [1, 2, 3], 1) == 1
    with pytest.raises(ConfigError, match="no longer exists"):
        rollback_target(live, Lifecycle(promoted_from=2), [1, 3], None)
    with pytest.raises(ConfigError, match="nothing to roll back"):
        rollback_target(live, Lifecycle(), [3], None)


def test_gc_drops_only_versions_unaliased_longer_than_the_retention():
    """Live kept, recently unaliased kept, building kept unless abandoned, old retired dropped."""
    now, day = 1_000_000.0, 86_400.0
    states = [
        state(1, lifecycle=Lifecycle(unaliased_at=now - 2 * day)),
        state(2, lifecycle=Lifecycle(unaliased_at=now - 3600)),
        state(3, live=True),
        state(4),
        state(5),
    ]
    choice = gc_choice(states, now, retention_s=day, abandon=[5])
    assert [v.version for v in choice.drop] == [1, 5]
    kept = {v.version: why for v, why in choice.keep}
    assert kept[3] == "live"
    assert "retention" in kept[2]
    assert "in progress" in kept[4]
