"""Real daemons over a real broker: start, stop, kill -9 and inspect them from a test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from pipeline.bus import Outgoing
from pipeline.bus.kafka import KafkaBus
from pipeline.config.settings import KafkaSettings, Settings
from pipeline.core.events import ChangeEvent
from pipeline.core.hashing import normalize_text
from pipeline.core.names import Topics
from pipeline.core.planner import chunk_point_ids
from pipeline.encoding.transformer import SentenceTransformerEncoder
from pipeline.observability import NullObserver
from pipeline.runtime import Runtime
from pipeline.runtime.adapters import make_chunker
from pipeline.store.edge import EdgeStore
from pipeline.versions.spec import read_version
from tests.conftest import REPO
from tests.groundtruth import PointSets, actual_points
from tests.kafka_fixtures import TEST_TIMEOUTS

CHUNKING = {"max_tokens": 48, "overlap_tokens": 8}


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Daemon:
    """One `embedstream` process; its output goes to a log file we can read back."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log_path = log
        self._log = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", *args],
            cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM: the daemon drains its batch, commits and exits."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float) -> int:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(
                f"{self.name} did not exit within {timeout}s:\n{self.output()[-3000:]}"
            ) from None
        self._log.close()
        return code

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.output().splitlines():
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return records

    def readyz(self) -> int:
        """HTTP status of the daemon's /readyz (0 when it does not answer)."""
        import urllib.error
        import urllib.request

        url = next((r["http"] for r in self.log_records() if "http" in r), None)
        if url is None:
            return 0
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return 0

    def encoded(self) -> int:
        return sum(int(r.get("encoded", 0)) for r in self.log_records() if r.get("msg") == "encoded chunks")

    def emitted(self) -> int:
        """Changes a source daemon published and the broker acknowledged, from its log."""
        total = 0
        for record in self.log_records():
            words = str(record.get("msg", "")).split()
            if words[:2] == ["source", "emitted"] and len(words) > 2 and words[2].isdigit():
                total += int(words[2])
        return total


class KafkaPipeline:
    """A whole deployment for one test: unique topics, one state dir, the tiny model."""

    def __init__(self, root: Path, kafka: KafkaSettings, model: Path, **env: str) -> None:
        self.root = root
        self.kafka = kafka
        self.topics = Topics(kafka.topic_prefix)
        self.state = root / "state"
        self.settings = Settings.load(
            state_dir=self.state, model={"name": str(model)}, chunking=CHUNKING, kafka=kafka.model_dump()
        )
        self.env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            "EMBEDSTREAM_LOG_LEVEL": "INFO",
            "EMBEDSTREAM_STATE_DIR": str(self.state),
            "EMBEDSTREAM_MODEL__NAME": str(model),
            "EMBEDSTREAM_CHUNKING__MAX_TOKENS": str(CHUNKING["max_tokens"]),
            "EMBEDSTREAM_CHUNKING__OVERLAP_TOKENS": str(CHUNKING["overlap_tokens"]),
            "EMBEDSTREAM_KAFKA__BOOTSTRAP": kafka.bootstrap,
            "EMBEDSTREAM_KAFKA__TOPIC_PREFIX": kafka.topic_prefix,
            "EMBEDSTREAM_KAFKA__PARTITIONS": str(kafka.partitions),
            "EMBEDSTREAM_KAFKA__BATCH_MAX_RECORDS": "8",
            "EMBEDSTREAM_KAFKA__BATCH_MAX_WAIT_MS": "100",
            **env,
        }
        self.env.pop("EMBEDSTREAM_CRASH_AT", None)
        self.daemons: list[Daemon] = []
        self.produced = 0
        self.runtime = Runtime(self.settings, NullObserver())
        self._bus = KafkaBus(
            kafka,
            client_id="embedstream-test",
            timeouts=TEST_TIMEOUTS,
            max_message_bytes=self.runtime.message_limit,
        )
        self._encoder = SentenceTransformerEncoder(self.settings.model)
        self.chunker = make_chunker(self._encoder, self.settings)

    @property
    def encoder(self) -> SentenceTransformerEncoder:
        """The daemons' model, for comparing stored vectors with fresh encodings."""
        return self._encoder

    def start(self, *args: str, crash_at: str | None = None, **env: str) -> Daemon:
        extra = {"EMBEDSTREAM_CRASH_AT": crash_at} if crash_at else {}
        name = f"{args[0]}-{len(self.daemons)}"
        daemon = Daemon(name, list(args), {**self.env, **extra, **env}, self.root / f"{name}.log")
        self.daemons.append(daemon)
        return daemon

    def create_topics(self) -> None:
        """The topics as the daemons create them (message size limit included)."""
        self._bus.ensure_topics(self.runtime.topic_specs(1))

    def produce(self, events: Iterable[ChangeEvent]) -> None:
        self.produce_raw((e.key, e.to_bytes()) for e in events)

    def produce_raw(self, items: Iterable[tuple[str, bytes | None]]) -> None:
        messages = [Outgoing(self.topics.changes, key, value) for key, value in items]
        self._bus.producer().send(messages)
        self.produced += len(messages)

    # -- progress

    def group_lag(self, stage: str, topic: str) -> int | None:
        """Records not yet committed by the stage's group; None until it committed at all."""
        group = f"{self.kafka.topic_prefix}.{stage}.docs-v1"
        admin = KafkaAdminClient(bootstrap_servers=self.kafka.bootstrap)
        consumer = KafkaConsumer(bootstrap_servers=self.kafka.bootstrap, enable_auto_commit=False)
        try:
            offsets = admin.list_group_offsets({group: None}).get(group, {})
            committed = {tp: meta.offset for tp, meta in offsets.items()}
            partitions = consumer.partitions_for_topic(topic) or set()
            ends = consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        finally:
            admin.close()
            consumer.close()
        if not committed:
            return None
        return sum(end - max(committed.get(tp, 0), 0) for tp, end in ends.items())

    def topic_size(self, topic: str) -> int:
        consumer = KafkaConsumer(bootstrap_servers=self.kafka.bootstrap, enable_auto_commit=False)
        try:
            partitions = consumer.partitions_for_topic(topic) or set()
            return sum(consumer.end_offsets([TopicPartition(topic, p) for p in partitions]).values())
        finally:
            consumer.close()

    def drained(self) -> bool:
        vectors = self.topics.vectors("docs", 1)
        try:
            return self._drained(vectors)
        except KafkaError:  # e.g. the group coordinator is still loading: not drained yet
            return False

    def _drained(self, vectors: str) -> bool:
        return (
            self.topic_size(self.topics.changes) >= self.produced
            and self.group_lag("embed", self.topics.changes) == 0
            and self.group_lag("sink", vectors) == 0
        )

    def wait_drained(self, timeout: float = 180) -> None:
        def settled() -> bool:
            for daemon in self.daemons:
                if not daemon.alive() and daemon.process.returncode not in (0, -signal.SIGKILL):
                    raise AssertionError(
                        f"{daemon.name} exited {daemon.process.returncode}:\n{daemon.output()}"
                    )
            return self.drained()

        wait_for(settled, timeout, "the pipeline to drain")

    # -- the index

    def points(self) -> PointSets:
        """The index's point sets; the sink owning the embedded store must be stopped."""
        store = EdgeStore(self.settings.qdrant_dir)
        try:
            version = read_version(store, "docs__v1")
            assert version is not None, "the sink never created docs__v1"
            return actual_points(store, version)
        finally:
            store.close()

    def expected(self, events: Iterable[ChangeEvent]) -> PointSets:
        """Ground truth from events: each document's highest version wins."""
        latest: dict[str, ChangeEvent] = {}
        for event in events:
            if event.key not in latest or event.version >= latest[event.key].version:
                latest[event.key] = event
        truth: PointSets = {}
        for key, event in latest.items():
            if event.op == "upsert" and event.text:
                chunks = self.chunker.chunk(normalize_text(event.text))
                truth[key] = set(chunk_point_ids(key, chunks))
        return truth

    def unique_chunks(self, events: Iterable[ChangeEvent]) -> int:
        hashes = set()
        for event in events:
            if event.op == "upsert" and event.text:
                hashes |= {c.hash for c in self.chunker.chunk(normalize_text(event.text))}
        return len(hashes)

    def close(self) -> None:
        for daemon in self.daemons:
            if daemon.alive():
                daemon.process.kill()
            daemon.wait(10)
        self._bus.close()


def document(doc_id: str, version: int, topic: str, paragraphs: int) -> ChangeEvent:
    text = "\n\n".join(
        f"Paragraph {i} of {doc_id} is about {topic}. It describes aspect {i} of {topic} in "
        f"plain words so that chunks carry real tokens, version {version if i == 0 else 0}."
        for i in range(paragraphs)
    )
    return ChangeEvent(source="kt", doc_id=doc_id, op="upsert", text=text, version=version)


def deletion(doc_id: str, version: int) -> ChangeEvent:
    return ChangeEvent(source="kt", doc_id=doc_id, op="delete", version=version)
