"""What ``migrate``, ``index-versions`` and ``eval`` do, in the embedded mode and with Kafka.

Both modes keep the versions in the store (collection ``<name>__v<N>`` and its spec) and
swap the alias there. They differ in two facts:

* who else must know a new version: with Kafka, its spec also goes to the control topic
  (:mod:`pipeline.runtime.registry`), because embed workers never open the store;
* how far a new version lags: the embedded mode counts the documents of the sources not
  yet replayed into it (:mod:`pipeline.runtime.backfill`); with Kafka, the version's embed and
  sink consumer groups' lag on the changes and vectors topics.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.bus.kafka import KafkaBus
from pipeline.config.settings import IndexSettings, ModelSettings, Settings
from pipeline.core.errors import ConfigError
from pipeline.encoding import Encoder
from pipeline.encoding.transformer import SentenceTransformerEncoder
from pipeline.observability import NullObserver
from pipeline.runtime import Runtime
from pipeline.runtime.models import effective_chunking, full_dims
from pipeline.runtime.registry import forget_version, publish_version, read_versions
from pipeline.sources import SourceBindings
from pipeline.store import VectorStore
from pipeline.versions.apply import (
    LagOf,
    PendingOf,
    Swap,
    collect_garbage,
    create_building,
    promote,
    rollback,
    version_states,
)
from pipeline.versions.decide import GcChoice, VersionState, next_number, plan_version
from pipeline.versions.doc_states import DocStates
from pipeline.versions.evaluation import EvalReport
from pipeline.versions.gate import QuerySet, evaluate_version
from pipeline.versions.spec import IndexVersion, Lifecycle, live_version, read_lifecycle, versions

log = logging.getLogger(__name__)


@dataclass
class Admin:
    """One command's handle on an index: settings, store, encoders, and the bus with Kafka."""

    settings: Settings
    runtime: Runtime
    kafka: KafkaBus | None = None

    @classmethod
    def open(cls, settings: Settings, *, kafka: bool) -> Admin:
        runtime = Runtime(settings, NullObserver())
        if not kafka:
            return cls(settings, runtime)
        bus = runtime.kafka_bus("embedstream-migrate")
        return cls(settings, runtime, bus)

    @property
    def name(self) -> str:
        return self.settings.index.name

    @property
    def store(self) -> VectorStore:
        return self.runtime.store  # opened on first use: StoreLocked names the owner

    def close(self) -> None:
        if self.kafka is not None:
            self.kafka.close()
        self.runtime.close()

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class StorageChoice:
    """What ``migrate start`` changes; None keeps the live version's choice."""

    model: str | None = None
    dims: int | None = None
    datatype: str | None = None
    quantization: str | None = None


# --------------------------------------------------------------------------- start


def start(admin: Admin, choice: StorageChoice, *, reencode: bool = False) -> IndexVersion:
    """Create version N+1 (and register it with Kafka); the alias stays where it is."""
    store, name = admin.store, admin.name
    live = live_version(store, name)
    existing = [v.version for v in versions(store, name)]
    if admin.kafka is not None:
        existing += list(read_versions(admin.kafka, admin.runtime.topics, name))
    model = _model_of(admin, live, choice)
    encoder = _encoder_for(admin, live, model)
    same_model = live is not None and live.fingerprint == encoder.fingerprint
    dims = live.full_dims if same_model and live is not None else full_dims(encoder)
    index = _index_settings(admin.settings.index, live if same_model else None, choice)
    chunking = effective_chunking(encoder, admin.settings)
    if same_model and live is not None and live.chunk_tokens and not admin.settings.chunking.model_fields_set:
        # Chunking left at its defaults keeps the live version's recorded chunker (as index
        # does): a default that changed between releases must not force a re-encode.
        chunking = (live.chunk_tokens, live.overlap_tokens)
    number = next_number(existing)
    spec = plan_version(
        index, number, encoder.fingerprint, dims, model=model, chunking=chunking, live=live, reencode=reencode
    )
    create_building(store, spec)
    if admin.kafka is not None:
        admin.kafka.ensure_topics(admin.runtime.topic_specs(number))
        publish_version(admin.kafka, admin.runtime.topics, spec)
    return spec


def _model_of(admin: Admin, live: IndexVersion | None, choice: StorageChoice) -> ModelSettings:
    base = admin.settings.model
    if choice.model is not None:
        return base.model_copy(update={"name": choice.model})
    return live.model_settings(base) if live is not None and live.model else base


def _encoder_for(admin: Admin, live: IndexVersion | None, model: ModelSettings) -> Encoder:
    if live is not None and live.model and model == live.model_settings(admin.settings.model):
        return admin.runtime.encoders.for_version(live)
    return SentenceTransformerEncoder(model, state_dir=admin.settings.state_dir)


def _index_settings(base: IndexSettings, live: IndexVersion | None, choice: StorageChoice) -> IndexSettings:
    """The live version's storage choices (dims only for the same model), then the flags."""
    held: dict[str, Any] = {}
    if live is not None:
        held = {
            "dims": live.dims if live.dims != live.full_dims else None,
            "datatype": live.datatype,
            "quantization": live.quantization,
            "oversampling": live.oversampling,
            "rescore": live.rescore,
        }
    flags = {k: v for k, v in vars(choice).items() if k != "model" and v is not None}
    try:
        return IndexSettings.model_validate({**base.model_dump(), **held, **flags})
    except ValueError as exc:
        raise ConfigError(f"migrate start: {exc}") from exc


def next_steps(admin: Admin, spec: IndexVersion) -> list[str]:
    """What the operator runs next, in this mode."""
    n, name = spec.version, spec.name
    tail = (
        f"then `embedstream migrate status --index {name}` and `embedstream migrate promote --index {name}`"
    )
    if admin.kafka is None:
        return [
            f"run `embedstream index PATH --index {name}` (or `watch`) for each folder of the index: it "
            f"replays them into v{n} and from then on feeds every version",
            tail,
        ]
    if spec.vectors_from:
        return [
            f"run `embedstream sink --index {name} --version {n}`: it reads the vectors of "
            f"v{spec.vectors_from}, nothing is encoded",
            tail,
        ]
    return [
        f"run `embedstream embed --index {name} --version {n} --model {spec.model}` (one per GPU) and "
        f"`embedstream sink --index {name} --version {n}`: they backfill from the changes topic",
        tail,
    ]


# --------------------------------------------------------------------------- status and gates


def states(admin: Admin, *, evaluate: bool = False) -> list[VersionState]:
    """Every version with counts and lag; with ``evaluate``, scores on the configured
    query set (when the index has one)."""
    found = _states(admin)
    return with_evaluations(admin, found, [s.version.version for s in found]) if evaluate else found


def _states(admin: Admin) -> list[VersionState]:
    store, name = admin.store, admin.name
    if admin.kafka is not None:
        return version_states(store, name, _kafka_lag(admin))
    pending = _embedded_pending(admin)
    return version_states(store, name, _embedded_lag(admin, pending), pending_of=pending)


def with_evaluations(
    admin: Admin, found: Sequence[VersionState], numbers: Sequence[int]
) -> list[VersionState]:
    """``found`` with the scores of versions ``numbers`` on the configured query set (none
    configured: unchanged, and promote says so)."""
    query_set = QuerySet.configured(admin.settings.index)
    if query_set is None:
        return list(found)
    scored = []
    for state in found:
        version = state.version
        if version.version in numbers:
            scored.append(dataclasses.replace(state, evaluation=_evaluate(admin, version, query_set)))
        else:
            scored.append(state)
    return scored


def _embedded_pending(admin: Admin) -> PendingOf:
    bound = set(SourceBindings.of(admin.settings.index_home).names())

    def pending(_version: IndexVersion, lifecycle: Lifecycle) -> tuple[str, ...]:
        if lifecycle.live_since is not None or lifecycle.unaliased_at is not None:
            return ()  # it has been live: it was fed all along
        return tuple(sorted(bound - set(lifecycle.backfilled)))

    return pending


def _embedded_lag(admin: Admin, pending: PendingOf) -> LagOf:
    """Documents of the live version from sources not yet replayed into the version."""

    live = live_version(admin.store, admin.name)

    def lag(version: IndexVersion) -> int:
        if live is None or live.version == version.version:
            return 0
        missing = pending(version, read_lifecycle(admin.store, version))
        states = DocStates(admin.store, live)
        return sum(states.live_count(source) for source in missing)

    return lag


def _kafka_lag(admin: Admin) -> LagOf:
    """Events the version's embed group has not taken from the changes topic, plus those
    its sink group has not written from its vectors topic (a rebuild has no embed group)."""
    bus, runtime = admin.kafka, admin.runtime
    assert bus is not None
    topics = runtime.topics

    def lag(version: IndexVersion) -> int:
        n = version.version
        total = 0
        if not version.vectors_from:
            total += sum(bus.group_lag(runtime.group_id("embed", n), [topics.changes]).values())
        vectors = topics.vectors(admin.name, version.vectors_version)
        return total + sum(bus.group_lag(runtime.group_id("sink", n), [vectors]).values())

    return lag


def promote_version(admin: Admin, number: int | None, *, force: bool) -> Swap:
    """Promote ``number`` (default: the newest version that is not live) if its gates pass."""
    found = _states(admin)
    live = next((s.version.version for s in found if s.live), None)
    if number is None:
        number = _newest_other(found, live)
    scored = with_evaluations(admin, found, [n for n in (number, live) if n is not None])
    return promote(admin.store, scored, number, admin.settings.index.eval_margin, force=force)


def _newest_other(found: Sequence[VersionState], live: int | None) -> int:
    others = [s.version.version for s in found if s.version.version != live]
    if not others:
        raise ConfigError("there is no version to promote: `embedstream migrate start` creates one")
    return max(others)


def _listed(admin: Admin) -> list[VersionState]:
    """The versions without their lag: what rollback and gc read (no broker round trips,
    so a rollback works while Kafka is down)."""
    return version_states(admin.store, admin.name, lambda _version: None)


def rollback_version(admin: Admin, to: int | None) -> Swap:
    return rollback(admin.store, _listed(admin), to)


def gc(admin: Admin, abandon: Sequence[int], *, dry_run: bool) -> GcChoice:
    """Drop old versions' collections; with Kafka also their specs (a tombstone in the control
    topic) and vectors topics, unless a remaining version still reads those vectors (a
    rebuild): then its embed workers keep running, checked against the spec they keep."""
    retention_s = admin.settings.index.gc_retention_hours * 3600
    found = _listed(admin)
    kafka, topics = admin.kafka, admin.runtime.topics

    def forget(version: IndexVersion, choice: GcChoice) -> None:
        gone = {v.version for v in choice.drop}
        still_read = {s.version.vectors_version for s in found if s.version.version not in gone}
        if kafka is not None and version.version not in still_read:
            forget_version(kafka, topics, version)
            kafka.delete_topics([topics.vectors(admin.name, version.version)])

    store = admin.store
    return collect_garbage(store, found, retention_s, abandon=abandon, dry_run=dry_run, on_drop=forget)


# --------------------------------------------------------------------------- listing and eval


def list_versions(admin: Admin) -> list[dict[str, Any]]:
    """``index-versions``: every version's spec and role (Kafka: also registered-only ones)."""
    store, name = admin.store, admin.name
    live = store.get_alias(name)
    rows = {
        v.version: _row(v, read_lifecycle(store, v), v.collection == live, True)
        for v in versions(store, name)
    }
    if admin.kafka is not None:
        for n, spec in read_versions(admin.kafka, admin.runtime.topics, name).items():
            rows.setdefault(n, _row(spec, Lifecycle(), False, False))
    return [rows[n] for n in sorted(rows)]


def _row(version: IndexVersion, lifecycle: Lifecycle, live: bool, stored: bool) -> dict[str, Any]:
    return {
        "version": version.version,
        "collection": version.collection,
        "state": role(lifecycle, live=live, stored=stored),
        "model": version.model or "(not recorded)",
        "fingerprint": version.fingerprint,
        "dims": version.dims,
        "datatype": version.datatype,
        "quantization": version.quantization,
        "oversampling": version.oversampling,
        "rescore": version.rescore,
        "chunking": f"{version.chunk_tokens}/{version.overlap_tokens}" if version.chunk_tokens else "-",
        "vectors_from": f"v{version.vectors_from}" if version.vectors_from else "-",
        "created_at": version.created_at or None,
    }


def role(lifecycle: Lifecycle, *, live: bool, stored: bool) -> str:
    if not stored:
        return "registered"  # in the control topic; the sink creates its collection
    if live:
        return "live"
    if lifecycle.unaliased_at is not None:
        return "retired"
    return "building"


def parse_target(raw: str) -> tuple[str | None, int | None]:
    """``NAME``, ``NAME@vN``, ``@vN``, ``vN`` or ``N`` -> (index name or None, version or None)."""
    name, at, version = raw.partition("@")
    if not at:
        if raw.lstrip("v").isdigit():
            return None, int(raw.lstrip("v"))
        return raw or None, None
    number = version.lstrip("v")
    if not number.isdigit():
        raise ConfigError(f"{raw!r}: expected NAME@vN, e.g. docs@v2")
    return name or None, int(number)


def evaluate_versions(admin: Admin, numbers: Sequence[int | None], query_set: QuerySet) -> list[EvalReport]:
    """One report per version (None: the live one), in the order given (the first is the baseline)."""
    store, name = admin.store, admin.name
    by_number = {v.version: v for v in versions(store, name)}
    reports = []
    for number in numbers:
        version = live_version(store, name) if number is None else by_number.get(number)
        if version is None:
            what = "no live version" if number is None else f"no version {number}"
            raise ConfigError(f"index {name!r} has {what} (see `embedstream index-versions`)")
        reports.append(_evaluate(admin, version, query_set))
    return reports


def _evaluate(admin: Admin, version: IndexVersion, query_set: QuerySet) -> EvalReport:
    """``version`` scored on ``query_set``, its queries encoded by the version's own model."""
    return evaluate_version(admin.store, version, admin.runtime.encoders.for_version(version), query_set)
