"""The producer side: batches sent with acks=all, and a message refused for its size named by key."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from pipeline.bus import Outgoing, key_bytes
from pipeline.bus.kafka.connection import MAX_MESSAGE_BYTES, Connection
from pipeline.bus.kafka.errors import TOO_LARGE, Translator
from pipeline.bus.kafka.library import KafkaProducer, kafka_errors
from pipeline.core.errors import BusUnavailable, MessageTooLarge

PRODUCER_CLOSE_TIMEOUT_S = 5.0


def new_producer(connection: Connection, max_message_bytes: int) -> Any:
    """A kafka-python producer that reports a message sent only once all in-sync replicas have it."""
    return connection.build(
        KafkaProducer,
        acks="all",
        # Broker-side dedupe of the client's own retries: a retried produce after a
        # lost ack does not write the message twice.
        enable_idempotence=True,
        compression_type="gzip",
        linger_ms=5,
        max_request_size=max_message_bytes,
        retries=2_147_483_647,  # bounded by delivery_timeout_ms, not by a count
        delivery_timeout_ms=connection.timeouts.delivery_ms,
        # send() blocks at most this long for metadata (e.g. broker down at start).
        max_block_ms=connection.timeouts.request_ms,
    )


class KafkaProducerAdapter:
    """Sends batches and returns only once every message is acknowledged.

    The client is created on the first send, so a worker can start while the broker is
    still down; construction failures surface as :class:`BusUnavailable` and are retried.
    A message refused for its size raises :class:`MessageTooLarge` naming its key.
    """

    def __init__(self, factory: Callable[[], Any], send_timeout_s: float, translated: Translator) -> None:
        self._factory = factory
        self._send_timeout_s = send_timeout_s
        self._translated = translated
        self._producer: Any = None

    def send(self, messages: Sequence[Outgoing]) -> None:
        if not messages:
            return
        with self._translated("produce"):
            producer = self._client()
            futures = [_send_one(producer, message) for message in messages]
            producer.flush(timeout=self._send_timeout_s)
        # flush() returned, so every future is done; still check EVERY one: a single
        # failed message means the batch's output is incomplete and must not be committed.
        failures = [(m, e) for m, e in zip(messages, map(_delivery_error, futures), strict=True) if e]
        if failures:
            if not all(getattr(error, "retriable", False) for _, error in failures):
                # kafka-python's idempotent producer treats a refused batch as fatal and
                # fails every later send; the next send gets a fresh client instead.
                self._discard()
            self._raise_failure(failures, len(futures))

    def _raise_failure(self, failures: list[tuple[Outgoing, Exception]], sent: int) -> NoReturn:
        too_large = [(message, error) for message, error in failures if isinstance(error, TOO_LARGE)]
        if too_large:
            # The broker refuses a whole record batch; blame its largest message.
            message, error = max(too_large, key=lambda failure: _size(failure[0]))
            raise _too_large(message, f"the topic's {MAX_MESSAGE_BYTES}") from error
        first = failures[0][1]
        self._translated.reraise("produce", first)
        raise BusUnavailable(f"{len(failures)} of {sent} messages not acknowledged: {first}") from first

    def _discard(self) -> None:
        producer, self._producer = self._producer, None
        with contextlib.suppress(kafka_errors.KafkaError):  # it is broken already: nothing to save
            producer.close(timeout=0)

    def close(self) -> None:
        if self._producer is not None:
            # Anything still buffered belongs to a send() that failed, whose batch stays
            # uncommitted and is produced again after a restart: no need to wait long.
            with self._translated("close producer"):
                self._producer.close(timeout=PRODUCER_CLOSE_TIMEOUT_S)
            self._producer = None

    def _client(self) -> Any:
        if self._producer is None:
            self._producer = self._factory()
        return self._producer


def _send_one(producer: Any, message: Outgoing) -> Any:
    try:
        return producer.send(
            message.topic,
            key=key_bytes(message.key),
            value=message.value,
            headers=list(message.headers),
        )
    except kafka_errors.MessageSizeTooLargeError as exc:
        raise _too_large(message, "max_request_size (max_message_bytes)") from exc


def _size(message: Outgoing) -> int:
    headers = sum(len(name) + len(value) for name, value in message.headers)
    return len(key_bytes(message.key)) + len(message.value or b"") + headers


def _shown(key: str, limit: int = 200) -> str:
    """A key for a message: repr (undecodable bytes show as escapes), bounded in length."""
    return repr(key) if len(key) <= limit else f"{key[:limit]!r}... ({len(key)} characters)"


def _too_large(message: Outgoing, limit: str) -> MessageTooLarge:
    size = _size(message)
    return MessageTooLarge(
        f"message for key {_shown(message.key)} to {message.topic} is {size} bytes, over {limit}",
        key=message.key,
        size=size,
    )


def _delivery_error(future: Any) -> Exception | None:
    try:
        future.get(timeout=0)
    except Exception as exc:  # any failure, retriable or not, means "not acknowledged"
        return exc
    return None
