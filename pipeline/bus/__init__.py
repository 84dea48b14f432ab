"""The ``Bus`` port: keyed, partitioned, replayable logs with consumer-group offsets.

Two adapters: :mod:`pipeline.bus.memory` (the embedded default, tests) and
:mod:`pipeline.bus.kafka`. Raw client records never leave an adapter; stages see
:class:`Record` and produce :class:`Outgoing`.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

Headers = tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: str | None
    value: bytes | None
    headers: Headers = ()
    timestamp_ms: int = 0


@dataclass(frozen=True)
class Outgoing:
    topic: str
    key: str
    value: bytes | None
    headers: Headers = ()


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication: int = 1
    compacted: bool = True
    #: Replicas that must hold a write before acks=all succeeds; None: the broker's default.
    min_insync_replicas: int | None = None


class Consumer(Protocol):
    def poll(self, max_records: int, timeout_s: float) -> list[Record]: ...

    def commit(self, records: Sequence[Record]) -> None:
        """Mark everything up to each partition's last record as done."""

    def lag(self) -> dict[tuple[str, int], int]: ...

    def processing(self) -> contextlib.AbstractContextManager[None]:
        """While the returned context is open the caller is busy with the last polled batch.

        A slow batch must not look like a dead consumer: Kafka evicts a member that does
        not poll within ``max_poll_interval_ms``, and the rebalance would hand the batch to
        another worker mid-flight. The caller must not use the consumer inside the context.
        """

    def close(self) -> None: ...


class Producer(Protocol):
    def send(self, messages: Sequence[Outgoing]) -> None:
        """Return only once every message is durably acknowledged."""

    def close(self) -> None: ...


class Bus(Protocol):
    def producer(self) -> Producer: ...

    def consumer(self, group: str, topics: Sequence[str]) -> Consumer: ...

    def ensure_topics(self, specs: Sequence[TopicSpec]) -> None: ...


def key_bytes(key: str) -> bytes:
    """The key's bytes: a key polled with undecodable bytes goes back out unchanged.

    A lone surrogate that did not come from decoding (e.g. ``"\\ud800"`` in an event's
    JSON) has no UTF-8 form; it is written as its surrogate code unit rather than making
    the send fail, since even its dead letter has to be written under that key.
    """
    try:
        return key.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return key.encode("utf-8", "surrogatepass")


def partition_for(key: str, partitions: int) -> int:
    """Stable partition choice for the in-process bus (Kafka uses its own murmur2)."""
    return int.from_bytes(hashlib.sha256(key_bytes(key)).digest()[:4], "big") % partitions


def next_offsets(records: Sequence[Record]) -> dict[tuple[str, int], int]:
    """The offsets to commit for a processed batch: one past each partition's last record."""
    offsets: dict[tuple[str, int], int] = {}
    for record in records:
        tp = (record.topic, record.partition)
        offsets[tp] = max(offsets.get(tp, 0), record.offset + 1)
    return offsets
