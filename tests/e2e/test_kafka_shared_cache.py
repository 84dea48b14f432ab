"""Embed workers on different hosts share the embedding cache (``cache.shared``) in the
Qdrant server: a worker that takes over the partitions of another encodes only new chunks."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from kafka.errors import KafkaError

from pipeline.core.events import ChangeEvent
from pipeline.core.hashing import normalize_text
from tests.e2e.kafka_harness import KafkaPipeline, document, wait_for
from tests.integration.test_cache_across_hosts import join_version_checks
from tests.qdrant_fixtures import QdrantEndpoint

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(600)]

TOPICS = ["harbours", "lighthouses", "glaciers", "orchards", "violins", "comets"]


@pytest.fixture
def deployment(
    tmp_path: Path, kafka_settings, tiny_model: Path, qdrant_server: QdrantEndpoint
) -> Iterator[KafkaPipeline]:
    prefix = f"t{uuid.uuid4().hex[:10]}_cache"
    env = {"EMBEDSTREAM_STORE__URL": qdrant_server.url, "EMBEDSTREAM_CACHE__SHARED": "true"}
    env["EMBEDSTREAM_CACHE__COLLECTION_PREFIX"] = prefix
    if qdrant_server.api_key:
        env["EMBEDSTREAM_STORE__API_KEY"] = qdrant_server.api_key
    pipeline = KafkaPipeline(tmp_path, kafka_settings, tiny_model, **env)
    store = qdrant_server.store()
    yield pipeline
    pipeline.close()
    try:
        for name in store.collections():
            if name.startswith(prefix):
                store.drop_collection(name)
    finally:
        store.close()
        join_version_checks()


def hashes(deployment: KafkaPipeline, events: Iterable[ChangeEvent]) -> set[str]:
    return {c.hash for e in events if e.text for c in deployment.chunker.chunk(normalize_text(e.text))}


def wait_embedded(deployment: KafkaPipeline) -> None:
    def done() -> bool:
        try:
            return deployment.group_lag("embed", deployment.topics.changes) == 0
        except KafkaError:  # the group coordinator may still be loading
            return False

    wait_for(done, 180, "the embed group to commit every change")


def test_a_worker_taking_over_the_partitions_on_another_host_encodes_only_new_chunks(
    deployment: KafkaPipeline, tmp_path: Path
):
    first = [document(f"doc-{i}", 10, topic, 3) for i, topic in enumerate(TOPICS)]
    host_a = deployment.start("embed", EMBEDSTREAM_STATE_DIR=str(tmp_path / "host-a"))
    deployment.produce(first)
    wait_embedded(deployment)
    assert host_a.stop() == 0, host_a.output()[-2000:]
    assert host_a.encoded() == len(hashes(deployment, first))

    # Host A is gone; host B (its own state dir: an empty local cache) takes its partitions
    # over. Most documents come again unchanged (a replay), two are edited, one is new.
    replayed = [event.model_copy(update={"version": 20}) for event in first[:4]]
    edited = [document(f"doc-{i}", 20, topic, 3) for i, topic in enumerate(TOPICS) if i >= 4]
    later = [*replayed, *edited, document("doc-new", 20, "meteorites", 3)]
    host_b = deployment.start("embed", EMBEDSTREAM_STATE_DIR=str(tmp_path / "host-b"))
    deployment.produce(later)
    wait_embedded(deployment)
    assert host_b.stop() == 0, host_b.output()[-2000:]
    new = hashes(deployment, later) - hashes(deployment, first)
    print(f"host A encoded {host_a.encoded()}, host B encoded {host_b.encoded()} (new: {len(new)})")
    # A shared-cache warning (a lookup or write that failed) explains a count that is off.
    warnings = [
        line for d in (host_a, host_b) for line in d.output().splitlines() if "shared embedding" in line
    ]
    assert 0 < host_b.encoded() == len(new) < len(hashes(deployment, later)), warnings
