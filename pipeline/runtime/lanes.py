"""The embedded pipeline's index versions: an embed and a sink worker per version (a lane).

The in-process bus mirrors the Kafka topology of a migration: every version of the index
has its own embed group on ``<prefix>.changes`` and its own sink group on its vectors
topic, so one change event reaches every version, each with its own model and chunker,
and each version's sink keeps that version exactly the corpus. A version being built also
reads its own backfill topic, where the source's current documents are replayed into it
alone (the embedded stand-in for reading the compacted changes topic from offset 0).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from pipeline.bus.memory import InMemoryBus
from pipeline.observability import Observer
from pipeline.runtime import Runtime
from pipeline.runtime.models import effective_chunking
from pipeline.stages.sink import PlanVersion, SinkStage
from pipeline.stages.worker import Worker
from pipeline.versions.spec import IndexVersion


@dataclass
class Lane:
    embed: Worker
    sink_stage: SinkStage
    sink: Worker

    def drain(self, lock: threading.RLock) -> None:
        """Process everything pending for this version: encoded, written, committed."""
        while self.embed.run_batch():
            self._drain_sink(lock)
        self._drain_sink(lock)

    def _drain_sink(self, lock: threading.RLock) -> None:
        while True:
            with lock:  # searches of other threads never see a half-written batch
                if not self.sink.run_batch():
                    return


def backfill_topic(runtime: Runtime, number: int) -> str:
    """The in-process topic that replays a source into version ``number`` only."""
    return runtime.topics.backfill(runtime.settings.index.name, number)


def build_lane(
    runtime: Runtime, bus: InMemoryBus, number: int, spec: IndexVersion | None, observer: Observer
) -> Lane:
    """Workers of version ``number``: its own model and chunker when ``spec`` is known; a
    version that does not exist yet is the settings' (created by its first document)."""
    producer = bus.producer()
    embed = runtime.embed_stage(number, spec, observer)
    changes = [runtime.topics.changes, backfill_topic(runtime, number)]
    embed_consumer = bus.consumer(f"embed-v{number}", changes)
    embed_worker = runtime.worker(embed, embed_consumer, producer, poll_timeout_s=0)
    sink = runtime.sink_stage(number, _planner(runtime, number) if spec is None else None, observer)
    vectors = [runtime.input_topic(sink, number)]
    sink_worker = runtime.worker(sink, bus.consumer(f"sink-v{number}", vectors), producer, poll_timeout_s=0)
    return Lane(embed_worker, sink, sink_worker)


def _planner(runtime: Runtime, number: int) -> PlanVersion:
    """The spec a first version gets: the settings', with the model and chunker recorded."""
    settings = runtime.settings

    def plan(fingerprint: str, full_dims: int) -> IndexVersion:
        chunking = effective_chunking(runtime.encoder, settings)
        return IndexVersion.plan(
            settings.index, number, fingerprint, full_dims, model=settings.model, chunking=chunking
        )

    return plan
