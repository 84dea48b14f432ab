"""The Kafka path of `make bench`: the same embed and sink stages, over a real broker.

Runs a single-node Kafka broker (ops/kafka), then the embed and sink workers as threads of
this process (the same ``Worker`` + stage objects the daemons run, sharing the already
loaded model), and measures (a) throughput on a backlog and (b) freshness — the time from
a change event's creation to its vectors being durable in Qdrant — at a steady rate.
"""

from __future__ import annotations

import importlib
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.bus import Outgoing
from pipeline.bus.kafka import KafkaBus
from pipeline.config.settings import Settings
from pipeline.core.events import ChangeEvent
from pipeline.encoding import Encoder
from pipeline.observability import NullObserver
from pipeline.runtime import Runtime

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Recorder(NullObserver):
    """Counts what the stages did; records per-event freshness at the sink."""

    freshness_s: list[float] = field(default_factory=list)
    encoded: int = 0
    encode_seconds: float = 0.0
    docs: int = 0  # durable in Qdrant: counted when the sink reports freshness

    def chunks(self, encoded: int, reused: int, tokens: int) -> None:
        self.encoded += encoded

    def encode_batch(self, seconds: float) -> None:
        self.encode_seconds += seconds

    def freshness(self, stage: str, seconds: Sequence[float]) -> None:
        self.freshness_s.extend(seconds)
        self.docs += len(seconds)


def start_broker(work: Path) -> object:
    sys.path.insert(0, str(REPO / "ops" / "kafka"))
    broker = importlib.import_module("broker").KafkaBroker(REPO / ".cache" / "kafka" / "libs", work / "kafka")
    broker.start()
    return broker


class KafkaPath:
    """The daemons' binding of the runtime, with the embed and sink workers as threads."""

    def __init__(self, settings: Settings, encoder: Encoder, bootstrap: str) -> None:
        kafka = settings.kafka.model_copy(
            update={
                "bootstrap": bootstrap, "topic_prefix": f"bench{uuid.uuid4().hex[:6]}", "partitions": 3,
                "batch_max_records": 64,
            }
        )  # fmt: skip
        self.settings = settings.model_copy(update={"kafka": kafka})
        self.recorder = Recorder()
        self.runtime = Runtime(self.settings, self.recorder, encoder=encoder)
        self.topics = self.runtime.topics
        self.bus = KafkaBus(
            kafka, client_id="embedstream-bench", max_message_bytes=self.runtime.message_limit
        )
        self.bus.ensure_topics(self.runtime.topic_specs(1))
        self.stop = threading.Event()
        self.workers = []
        for stage in (self.runtime.embed_stage(1), self.runtime.sink_stage(1)):
            consumer = self.bus.consumer(
                self.runtime.group_id(stage.name, 1), [self.runtime.input_topic(stage, 1)]
            )
            self.workers.append(self.runtime.worker(stage, consumer, self.bus.producer(), stop=self.stop))
        self.threads = [threading.Thread(target=w.run, daemon=True) for w in self.workers]
        for thread in self.threads:
            thread.start()
        self.producer = self.bus.producer()

    def publish(self, events: Sequence[ChangeEvent]) -> None:
        self.producer.send([Outgoing(self.topics.changes, e.key, e.to_bytes()) for e in events])

    def wait_for_docs(self, count: int, timeout_s: float = 1800) -> None:
        deadline = time.monotonic() + timeout_s
        while self.recorder.docs < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.recorder.docs}/{count} documents reached the sink")
            time.sleep(0.05)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)
        self.runtime.close()
        self.bus.close()


def measure(
    settings: Settings, encoder: Encoder, backlog: list[ChangeEvent],
    steady: list[ChangeEvent], bootstrap: str,
) -> dict[str, float]:  # fmt: skip
    """Backlog throughput (chunks/s) and freshness p50/p99 at half of that rate."""
    path = KafkaPath(settings, encoder, bootstrap)
    try:
        warm = backlog[:2]
        path.publish(warm)
        path.wait_for_docs(len(warm))  # group joins and topic metadata before the clock starts
        encoded_before, encode_s_before = path.recorder.encoded, path.recorder.encode_seconds
        started = time.perf_counter()
        path.publish(backlog[2:])
        path.wait_for_docs(len(backlog))
        seconds = time.perf_counter() - started
        chunks_per_s = (path.recorder.encoded - encoded_before) / seconds
        docs_per_s = (len(backlog) - 2) / seconds
        encode_share = (path.recorder.encode_seconds - encode_s_before) / seconds

        path.recorder.freshness_s.clear()
        rate = docs_per_s / 2
        done = path.recorder.docs
        began = time.monotonic()
        for index, event in enumerate(steady):
            time.sleep(max(0.0, began + index / rate - time.monotonic()))
            path.publish([event.model_copy(update={"emitted_at": time.time()})])
        path.wait_for_docs(done + len(steady))
        fresh = sorted(path.recorder.freshness_s)
        return {
            "kafka_chunks_per_s": chunks_per_s,
            "kafka_encode_share_of_wall": encode_share,
            "kafka_docs_per_s": docs_per_s,
            "steady_rate_docs_per_s": rate,
            "freshness_p50_s": fresh[len(fresh) // 2],
            "freshness_p99_s": fresh[min(len(fresh) - 1, int(len(fresh) * 0.99))],
        }
    finally:
        path.close()
