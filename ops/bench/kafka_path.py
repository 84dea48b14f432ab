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
from pipeline.cache import SqliteEmbeddingCache
from pipeline.components import make_chunker, open_store
from pipeline.daemons import group_id, topic_specs
from pipeline.encoder import SentenceTransformerEncoder
from pipeline.events import ChangeEvent
from pipeline.observe import NullObserver
from pipeline.settings import Settings
from pipeline.stages.embed import EmbedStage
from pipeline.stages.sink import SinkStage
from pipeline.topics import Topics
from pipeline.worker import Worker

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
    def __init__(self, settings: Settings, encoder: SentenceTransformerEncoder, bootstrap: str) -> None:
        kafka = settings.kafka.model_copy(
            update={"bootstrap": bootstrap, "topic_prefix": f"bench{uuid.uuid4().hex[:6]}", "partitions": 3}
        )
        self.settings = settings.model_copy(update={"kafka": kafka})
        self.topics = Topics(kafka.topic_prefix)
        self.bus = KafkaBus(kafka, client_id="embedstream-bench")
        self.bus.ensure_topics(topic_specs(self.settings, 1))
        self.recorder = Recorder()
        self.stop = threading.Event()
        self.store = open_store(self.settings)
        cache = SqliteEmbeddingCache(self.settings.cache_path)
        vectors = self.topics.vectors(self.settings.index.name, 1)
        embed = EmbedStage(
            encoder, cache, make_chunker(encoder, self.settings), self.settings.limits, vectors,
            self.topics.dlq, self.recorder,
        )  # fmt: skip
        sink = SinkStage(self.store, self.settings.index, 1, self.topics.dlq, self.recorder)
        wait = kafka.batch_max_wait_ms / 1000
        self.workers = [
            Worker(self.bus.consumer(group_id(self.settings, "embed", 1), [self.topics.changes]),
                   self.bus.producer(), embed, self.recorder, max_records=64, poll_timeout_s=wait, stop=self.stop),
            Worker(self.bus.consumer(group_id(self.settings, "sink", 1), [vectors]),
                   self.bus.producer(), sink, self.recorder, max_records=64, poll_timeout_s=wait, stop=self.stop),
        ]  # fmt: skip
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
        self.store.close()
        self.bus.close()


def measure(
    settings: Settings, encoder: SentenceTransformerEncoder, backlog: list[ChangeEvent],
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
