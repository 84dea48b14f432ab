"""A flood of malformed change records never stops the Kafka pipeline.

Real broker, real embed and sink daemons: 1,000 malformed records of every kind a foreign
producer or a bug can write (invalid JSON, non-UTF-8 values and keys, wrong shapes, unknown
schema versions, missing fields, wrong types, empty text, text just over and far over the
size limit, huge keys) interleaved with 20 valid documents. Every malformed record reaches
the DLQ, the 20 documents are indexed exactly, no daemon exits, and /readyz says 200.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.core.events import ChangeEvent
from tests.e2e.kafka_harness import KafkaPipeline, document, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(900)]

LIMIT = 2_000_000  # limits.max_doc_bytes: the default


def _surrogate(raw: bytes) -> str:
    """A key whose bytes are not UTF-8, as the Kafka adapter hands it over."""
    return raw.decode("utf-8", "surrogateescape")


def _event(doc_id: str, **fields: object) -> dict[str, object]:
    return {"source": "kt", "doc_id": doc_id, "op": "upsert", "text": "Some text.", "version": 1, **fields}


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


#: One maker per kind of malformed record: n -> (key, value).
MALFORMED: list[Callable[[int], tuple[str, bytes]]] = [
    lambda n: (f"kt/json-{n}", b"{not json " + str(n).encode()),
    lambda n: (f"kt/bytes-{n}", b"\xff\xfe\xfd not utf-8 " + str(n).encode()),
    lambda n: (f"kt/shape-{n}", _json([1, 2, n])),
    lambda n: (f"kt/future-{n}", _json(_event(f"future-{n}", schema_version=99))),
    lambda n: (f"kt/missing-{n}", _json({"source": "kt", "op": "upsert", "text": "no id, no version"})),
    lambda n: (f"kt/types-{n}", _json(_event(f"types-{n}", version="yesterday", text=n))),
    lambda n: (f"kt/empty-{n}", _json(_event(f"empty-{n}", text=" \n\t "))),
    lambda n: (_surrogate(b"kt/\xff\xfe-" + str(n).encode()), _json(_event(f"badkey-{n}"))),
    lambda n: ("kt/" + "k" * 20_000 + str(n), _json(_event("k" * 20_000 + str(n)))),
]
#: A few records large enough to test the size limits (each costs megabytes on the broker).
LARGE: list[Callable[[int], tuple[str, bytes]]] = [
    lambda n: (f"kt/over-{n}", ChangeEvent(source="kt", doc_id=f"over-{n}", op="upsert",
                                           text="w" * (LIMIT + 1), version=1).to_bytes()),
    lambda n: (f"kt/far-over-{n}", ChangeEvent(source="kt", doc_id=f"far-over-{n}", op="upsert",
                                               text="w" * (2 * LIMIT), version=1).to_bytes()),
]  # fmt: skip


def records(valid: list[ChangeEvent]) -> Iterator[tuple[str, bytes]]:
    """1,000 malformed records, 4 of them large, with the valid events spread among them."""
    every = 1000 // len(valid)
    for n in range(1000):
        if n % every == 0 and n // every < len(valid):
            event = valid[n // every]
            yield event.key, event.to_bytes()
        maker = LARGE[n % len(LARGE)] if n in (100, 350, 600, 850) else MALFORMED[n % len(MALFORMED)]
        yield maker(n)


def test_a_thousand_malformed_records_all_reach_the_dlq_and_the_valid_ones_are_indexed(
    tmp_path: Path, kafka_settings, tiny_model: Path
):
    """No daemon exits, every malformed record is dead-lettered once, the valid ones are exact."""
    deployment = KafkaPipeline(
        tmp_path, kafka_settings, tiny_model, EMBEDSTREAM_KAFKA__BATCH_MAX_RECORDS="64"
    )
    try:
        deployment.create_topics()
        embed, second, sink = deployment.start("embed"), deployment.start("embed"), deployment.start("sink")
        valid = [document(f"doc-{i}", 10, f"topic {i}", 2 + i % 3) for i in range(20)]
        deployment.produce_raw(records(valid))
        deployment.wait_drained(timeout=600)
        wait_for(lambda: deployment.topic_size(deployment.topics.dlq) >= 1000, 60, "the DLQ to hold 1,000")
        assert deployment.topic_size(deployment.topics.dlq) == 1000
        assert all(d.alive() for d in (embed, second, sink)), [
            d.output()[-2000:] for d in (embed, second, sink)
        ]
        assert all(d.readyz() == 200 for d in (embed, second, sink))
        for daemon in (embed, second, sink):
            assert daemon.stop() == 0
        assert deployment.points() == deployment.expected(valid)
    finally:
        deployment.close()
