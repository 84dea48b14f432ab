"""Index versions as data on the bus: the compacted control topic ``<prefix>.versions``.

Kafka embed workers never open the store, yet they must agree with the sinks and the CLI on
what version N is (model fingerprint, chunker, where its vectors go). So every version's
spec is also a record of the control topic, keyed ``<index>/v<N>`` and compacted, so the
topic is a complete table of specs. ``migrate start`` writes a new version's record; the
first embed worker of version 1 writes it when there is none (older deployments). A spec
never changes once written: a worker whose model differs refuses to start.

The table is read whole, without a consumer group (:meth:`VersionBus.read_all`), in a few
hundred milliseconds; it holds one small record per version.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from pipeline.bus import Outgoing, Producer, Record
from pipeline.core.errors import ConfigError, InvalidEvent
from pipeline.core.names import Topics
from pipeline.runtime.models import effective_chunking, full_dims
from pipeline.stages.sink import PlanVersion
from pipeline.versions.spec import IndexVersion

if TYPE_CHECKING:
    from pipeline.runtime import Runtime


class VersionBus(Protocol):
    """What the registry needs of a bus (the in-process bus and Kafka both have it)."""

    def producer(self) -> Producer: ...

    def read_all(self, topic: str) -> list[Record]: ...


def version_key(name: str, number: int) -> str:
    return f"{name}/v{number}"


def publish_version(bus: VersionBus, topics: Topics, version: IndexVersion) -> None:
    """Write ``version``'s spec (returns once the broker acknowledged it)."""
    _record(bus, topics, version, json.dumps(version.to_json(), sort_keys=True).encode())


def read_versions(bus: VersionBus, topics: Topics, name: str) -> dict[int, IndexVersion]:
    """Every registered version of index ``name``, by number (the topic must exist)."""
    table: dict[str, bytes] = {}
    for record in bus.read_all(topics.versions):
        if record.key is not None:
            _apply(table, record.key, record.value)
    found: dict[int, IndexVersion] = {}
    for key, raw in table.items():
        index, _, number = key.rpartition("/v")
        if index == name and number.isdigit():
            found[int(number)] = _parse(key, raw)
    return found


def _apply(table: dict[str, bytes], key: str, value: bytes | None) -> None:
    if value is None:
        table.pop(key, None)  # a tombstone: the version was dropped
    else:
        table[key] = value


def _parse(key: str, raw: bytes) -> IndexVersion:
    try:
        return IndexVersion.from_json(json.loads(raw))
    except (ValueError, TypeError) as exc:
        raise InvalidEvent(f"the spec of {key} in the versions topic is unreadable: {exc}") from exc


def forget_version(bus: VersionBus, topics: Topics, version: IndexVersion) -> None:
    """A tombstone for a dropped version (``migrate gc``), so compaction removes its spec."""
    _record(bus, topics, version, None)


def _record(bus: VersionBus, topics: Topics, version: IndexVersion, value: bytes | None) -> None:
    producer = bus.producer()
    try:
        producer.send([Outgoing(topics.versions, version_key(version.name, version.version), value)])
    finally:
        producer.close()


# --------------------------------------------------------------------------- embed workers


def check_worker(spec: IndexVersion, fingerprint: str, chunking: tuple[int, int]) -> None:
    """An embed worker may write version ``spec`` only with its model and its chunker.

    Raises :class:`ConfigError` (exit 3) saying what differs and how to move to it instead.
    """
    if spec.vectors_from:
        msg = (
            f"{spec.label} is a rebuild from the vectors of v{spec.vectors_from}: it has no embed "
            f"workers of its own. Keep `embedstream embed --version {spec.vectors_from}` running "
            f"and run `embedstream sink --version {spec.version}`"
        )
        raise ConfigError(msg)
    problems = []
    if spec.fingerprint != fingerprint:
        problems.append(
            f"model: {spec.label} was built with {spec.fingerprint}, this worker runs {fingerprint}"
        )
    if spec.chunk_tokens and (spec.chunk_tokens, spec.overlap_tokens) != chunking:
        problems.append(
            f"chunking: {spec.label} cuts {spec.chunk_tokens} tokens with {spec.overlap_tokens} overlap, "
            f"this worker {chunking[0]} with {chunking[1]}"
        )
    if problems:
        msg = (
            f"this embed worker cannot write {spec.label} ({'; '.join(problems)}). To move the index to "
            f"this model or chunker, start a migration (`embedstream migrate start {spec.name} --model "
            "...`) and run embed workers with its --version; otherwise restore the version's settings"
        )
        raise ConfigError(msg)


def claim_version(
    bus: VersionBus,
    topics: Topics,
    name: str,
    number: int,
    planned: Callable[[], IndexVersion],
) -> IndexVersion:
    """The registered spec of ``name`` v``number``; version 1 is registered as ``planned()``
    when nobody did yet (a deployment from before the registry). Any other missing version
    is a configuration error: only ``migrate start`` creates versions."""
    registered = read_versions(bus, topics, name)
    if number in registered:
        return registered[number]
    if number != 1:
        known = ", ".join(f"v{n}" for n in sorted(registered)) or "none"
        msg = (
            f"index {name!r} has no version {number} (registered: {known}); "
            f"`embedstream migrate start {name}` creates the next one"
        )
        raise ConfigError(msg)
    publish_version(bus, topics, planned())
    # Two first workers racing: the table keeps the last record, and both read it back.
    return read_versions(bus, topics, name)[number]


# --------------------------------------------------------------------------- daemons


def embed_version(runtime: Runtime, bus: VersionBus, number: int) -> IndexVersion:
    """The spec an embed worker of version ``number`` writes; ConfigError (exit 3) when this
    worker's model or chunker is not the version's, or the version does not exist."""
    settings, encoder = runtime.settings, runtime.encoder
    chunking = effective_chunking(encoder, settings)

    def planned() -> IndexVersion:
        dims = full_dims(encoder)
        return IndexVersion.plan(
            settings.index, number, encoder.fingerprint, dims, model=settings.model, chunking=chunking
        )

    spec = claim_version(bus, runtime.topics, settings.index.name, number, planned)
    check_worker(spec, encoder.fingerprint, chunking)
    return spec


def sink_planner(runtime: Runtime, bus: VersionBus, number: int) -> PlanVersion:
    """What a sink creates version ``number`` as: its registered spec (read when the first
    event arrives, so an embed worker started later has registered it), else the settings'."""
    index = runtime.settings.index

    def plan(fingerprint: str, dims: int) -> IndexVersion:
        registered = read_versions(bus, runtime.topics, index.name).get(number)
        return registered or IndexVersion.plan(index, number, fingerprint, dims)

    return plan
