"""Kafka adapter of the ``Bus`` port, on kafka-python 3.

Delivery contract the worker relies on (at-least-once, idempotent writes downstream):

* :meth:`KafkaProducerAdapter.send` returns only when every message is acknowledged by
  all in-sync replicas; anything less raises :class:`BusUnavailable`, so the worker
  retries the whole batch and never commits offsets for output that may be missing.
* offsets are committed explicitly, per processed batch (auto-commit is off), so an
  uncommitted batch is redelivered to whoever owns the partition next.
* :meth:`KafkaConsumerAdapter.processing` keeps the group membership alive while a slow
  batch runs, so a long batch is not mistaken for a dead worker.
* one message size limit (``max_message_bytes``) holds for the producer, the consumer's
  fetches and every topic, so whatever one stage may write the next can read.
* a rejected password or certificate raises :class:`AuthenticationFailed` within
  seconds instead of being retried until a timeout; it never names a secret.
* keys are text, but any key bytes survive a round trip: keys that are not UTF-8 decode
  with ``surrogateescape`` and encode back to the same bytes.

kafka-python types and exceptions never leave this module: records become
:class:`Record`, library errors become :mod:`pipeline.core.errors` types at the boundary.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from pipeline.bus import Outgoing, Record, TopicSpec, key_bytes, next_offsets
from pipeline.config.settings import KafkaSettings
from pipeline.config.tls import certificate_error, client_context
from pipeline.core.errors import (
    AuthenticationFailed,
    BusUnavailable,
    CommitLost,
    FatalError,
    MessageTooLarge,
)

with warnings.catch_warnings():
    # kafka-python 3.0.12 loads its protocol schemas at import time through
    # importlib.resources' legacy API, deprecated since Python 3.11. The warning is
    # attributed to importlib rather than kafka, so a "kafka.*" warning filter misses it
    # and strict settings (the test suite's "error") would fail this import.
    warnings.filterwarnings("ignore", r"(open|read)_text is deprecated", DeprecationWarning)
    import kafka.errors as kafka_errors
    from kafka import (
        ConsumerRebalanceListener,
        KafkaAdminClient,
        KafkaConsumer,
        KafkaProducer,
        OffsetAndMetadata,
        TopicPartition,
    )
    from kafka.admin import ConfigResource, ConfigResourceType
    from kafka.net import KafkaNetClient
    from kafka.net.manager import KafkaConnectionManager
    from kafka.net.selector import NetworkSelector

log = logging.getLogger(__name__)

#: Default ``max_message_bytes``: a vectors event for a long document is ~1 MB, and the
#: 1 MiB client and broker defaults would reject it.
MAX_REQUEST_SIZE = 2_000_000
#: The topic setting that must be at least ``max_message_bytes``.
MAX_MESSAGE_BYTES = "max.message.bytes"
#: kafka-python's default bound on one fetch response; raised only for larger messages.
FETCH_MAX_BYTES = 52_428_800
#: Compacted topics keep the latest value per key; the cleaner runs early (dirty ratio
#: 10 %, 10-minute segments) so tombstones and superseded document versions do not pile
#: up in small, slowly growing topics.
COMPACTED_TOPIC_CONFIGS = {
    "cleanup.policy": "compact",
    "min.cleanable.dirty.ratio": "0.1",
    "segment.ms": "600000",
}
PRODUCER_CLOSE_TIMEOUT_S = 5.0
#: How long a poll waits while the member has no partitions (joining or rebalancing).
JOIN_POLL_S = 5.0
#: How long each keep-alive poll waits; also the most it adds to a long batch on exit.
KEEPALIVE_POLL_MS = 200
#: Error codes in admin responses that mean "already as requested".
_TOPIC_ALREADY_EXISTS = kafka_errors.TopicAlreadyExistsError.errno
_UNKNOWN_TOPIC = kafka_errors.UnknownTopicOrPartitionError.errno
_TOO_LARGE = (kafka_errors.MessageSizeTooLargeError, kafka_errors.RecordListTooLargeError)
#: OpenSSL verify codes for "the certificate is valid, but for another name".
_NAME_MISMATCH = {62, 63, 64}  # X509_V_ERR_HOSTNAME/EMAIL/IP_ADDRESS_MISMATCH


@dataclass(frozen=True)
class KafkaTimeouts:
    """Client timeouts: the defaults suit production; tests shrink them to fail fast."""

    #: Upper bound for one broker round trip (and for admin calls).
    request_ms: int = 30_000
    #: How long a new client waits for the first broker before giving up.
    bootstrap_ms: int = 30_000
    #: How long the producer keeps retrying a message before reporting it failed.
    delivery_ms: int = 120_000
    #: Heartbeat silence after which the broker evicts a consumer (process died).
    session_ms: int = 10_000
    heartbeat_ms: int = 2_000
    #: Gap between polls after which the client leaves the group (stuck loop); long
    #: batches are covered by :meth:`KafkaConsumerAdapter.processing`, not by this.
    max_poll_interval_ms: int = 300_000
    #: Reconnect quickly after a broker restart instead of backing off to 30 s.
    reconnect_backoff_max_ms: int = 1_000
    #: Bound on the lag query. It doubles as the daemons' broker probe (an idle
    #: consumer's poll just returns nothing while the broker is down), so it is kept
    #: well under ``request_ms``: an outage shows on /readyz within seconds.
    probe_ms: int = 5_000


class KafkaBus:
    """Topics, producers and consumer-group consumers on one Kafka cluster."""

    def __init__(
        self,
        settings: KafkaSettings,
        client_id: str = "embedstream",
        *,
        timeouts: KafkaTimeouts | None = None,
        max_message_bytes: int = MAX_REQUEST_SIZE,
    ) -> None:
        """``max_message_bytes`` bounds every message: produced, fetched, and in topics."""
        self._settings = settings
        self._client_id = client_id
        self._timeouts = timeouts or KafkaTimeouts()
        self._max_message_bytes = max_message_bytes
        # Built once, so the TLS files are read before the first connection.
        self._ssl_context = _ssl_context(settings) if settings.uses_tls else None
        self._translated = _Translator(settings)
        self._admin_client: Any = None

    def producer(self) -> KafkaProducerAdapter:
        return KafkaProducerAdapter(
            self._new_producer, self._timeouts.delivery_ms / 1000 + 5, self._translated
        )

    def consumer(self, group: str, topics: Sequence[str]) -> KafkaConsumerAdapter:
        keepalive_s = min(1.0, self._timeouts.max_poll_interval_ms / 3000)
        return KafkaConsumerAdapter(
            lambda: self._new_consumer(group),
            group,
            topics,
            keepalive_s,
            self._timeouts.probe_ms,
            self._translated,
        )

    def ensure_topics(self, specs: Sequence[TopicSpec]) -> None:
        """Create missing topics; raise ``max.message.bytes`` of existing ones if lower.

        Nothing else about an existing topic changes (idempotent): a topic made by an
        older version or by hand keeps its partitions and cleanup policy, but must accept
        every message this bus may write, or a large event would fail forever.
        """
        if not specs:
            return
        request = {spec.name: self._topic_options(spec) for spec in specs}
        with self._translated("create topics"):
            admin = self._admin()
            response = admin.create_topics(request, raise_errors=False)
            existing = _check_topic_errors(response, ignore=_TOPIC_ALREADY_EXISTS)
            # KRaft acknowledges a create before every partition has a leader; producing
            # right away would then wait on metadata, so wait here where it is expected.
            admin.wait_for_topics(list(request), timeout_ms=self._timeouts.request_ms)
            if existing:
                self._raise_message_limit(admin, existing)

    def delete_topics(self, names: Sequence[str]) -> None:
        """Delete topics (tests clean up with this); missing ones are ignored."""
        if not names:
            return
        with self._translated("delete topics"):
            response = self._admin().delete_topics(list(names), raise_errors=False)
            _check_topic_errors(response, ignore=_UNKNOWN_TOPIC)

    def list_topics(self) -> list[str]:
        with self._translated("list topics"):
            return sorted(self._admin().list_topics())

    def read_all(self, topic: str) -> list[Record]:
        """Every record ``topic`` holds now, partition by partition, without a consumer group
        (a small compacted table read whole: no join, no offsets left behind)."""
        with self._translated(f"read {topic}"):
            consumer = _build(KafkaConsumer, **self._common_configs(), enable_auto_commit=False)
            try:
                partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
                consumer.assign(partitions)
                consumer.seek_to_beginning(*partitions)
                ends = consumer.end_offsets(partitions)
                found: list[Record] = []
                deadline = time.monotonic() + self._timeouts.request_ms / 1000
                while any(consumer.position(tp) < ends[tp] for tp in partitions):
                    if time.monotonic() > deadline:
                        raise BusUnavailable(f"{topic} could not be read to its end in time")
                    batches = consumer.poll(timeout_ms=500)
                    found.extend(_record(raw) for tp in sorted(batches) for raw in batches[tp])
                return found
            finally:
                consumer.close()

    def group_lag(self, group: str, topics: Sequence[str]) -> dict[tuple[str, int], int]:
        """Records of ``topics`` that ``group`` has not committed, per partition, seen from
        outside the group (joining it would rebalance its workers). A partition the group
        never committed counts from the start of its log, as a new member would read it."""
        with self._translated("group lag"):
            found = self._group_offsets(group)
            committed = {(tp.topic, tp.partition): meta.offset for tp, meta in found.items()}
            consumer = _build(KafkaConsumer, **self._common_configs(), enable_auto_commit=False)
            try:
                partitions = [
                    TopicPartition(topic, p)
                    for topic in topics
                    for p in consumer.partitions_for_topic(topic) or ()
                ]
                ends = consumer.end_offsets(partitions)
                starts = consumer.beginning_offsets(partitions)
            finally:
                consumer.close()
        lag = {}
        for tp in partitions:
            done = committed.get((tp.topic, tp.partition), -1)
            lag[(tp.topic, tp.partition)] = ends[tp] - max(done, starts[tp])
        return lag

    def _group_offsets(self, group: str) -> dict[Any, Any]:
        """Committed offsets of ``group``. The first group lookup on a fresh cluster answers
        "coordinator not available" while the broker creates its offsets topic: ask again."""
        deadline = time.monotonic() + self._timeouts.request_ms / 1000
        while True:
            try:
                return dict(self._admin().list_group_offsets({group: None}).get(group, {}))
            except (kafka_errors.CoordinatorNotAvailableError, kafka_errors.CoordinatorLoadInProgressError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def _topic_options(self, spec: TopicSpec) -> dict[str, Any]:
        configs = {MAX_MESSAGE_BYTES: str(self._max_message_bytes)}
        return {
            "num_partitions": spec.partitions,
            "replication_factor": spec.replication,
            "configs": configs | (COMPACTED_TOPIC_CONFIGS if spec.compacted else {}),
        }

    def _raise_message_limit(self, admin: Any, topics: Sequence[str]) -> None:
        wanted = str(self._max_message_bytes)
        current = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name, [MAX_MESSAGE_BYTES]) for name in topics],
            config_filter="all",  # the broker default counts too: it is what applies
        ).get("topic", {})
        low = [name for name in topics if _message_limit(current.get(name, {})) < self._max_message_bytes]
        if not low:
            return
        results = admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name, {MAX_MESSAGE_BYTES: wanted}) for name in low],
            raise_on_unknown=False,
            incremental=True,  # only this key changes; the topic's other settings stay
        ).get("topic", {})
        failed = {name: result for name, result in results.items() if result != "OK"}
        if failed:
            raise FatalError(
                f"topics {sorted(failed)} accept smaller messages than max_message_bytes={wanted} "
                f"and raising their {MAX_MESSAGE_BYTES} failed ({next(iter(failed.values()))}); "
                "raise it with kafka-configs.sh --alter, or grant this user AlterConfigs"
            )
        log.info("raised %s of %s to %s", MAX_MESSAGE_BYTES, low, wanted)

    def close(self) -> None:
        if self._admin_client is not None:
            with contextlib.suppress(Exception):  # best effort: nothing to recover on close
                self._admin_client.close()
            self._admin_client = None

    # -- client construction ----------------------------------------------------

    def _common_configs(self) -> dict[str, Any]:
        settings = self._settings
        configs: dict[str, Any] = {
            "bootstrap_servers": settings.bootstrap.split(","),
            "client_id": self._client_id,
            "request_timeout_ms": self._timeouts.request_ms,
            "bootstrap_timeout_ms": self._timeouts.bootstrap_ms,
            "reconnect_backoff_max_ms": self._timeouts.reconnect_backoff_max_ms,
            "security_protocol": settings.security_protocol,
            "ssl_context": self._ssl_context,
        }
        if settings.uses_sasl:
            password = settings.sasl_password
            configs |= {
                "sasl_mechanism": settings.sasl_mechanism,
                # kafka-python names these "plain" for every mechanism, SCRAM included.
                "sasl_plain_username": settings.sasl_username,
                "sasl_plain_password": password.get_secret_value() if password else "",
            }
        return configs

    def _admin(self) -> Any:
        if self._admin_client is None:
            self._admin_client = _build(KafkaAdminClient, **self._common_configs())
        return self._admin_client

    def _new_producer(self) -> Any:
        return _build(
            KafkaProducer,
            **self._common_configs(),
            acks="all",
            # Broker-side dedupe of the client's own retries: a retried produce after a
            # lost ack does not write the message twice.
            enable_idempotence=True,
            compression_type="gzip",
            linger_ms=5,
            max_request_size=self._max_message_bytes,
            retries=2_147_483_647,  # bounded by delivery_timeout_ms, not by a count
            delivery_timeout_ms=self._timeouts.delivery_ms,
            # send() blocks at most this long for metadata (e.g. broker down at start).
            max_block_ms=self._timeouts.request_ms,
        )

    def _new_consumer(self, group: str) -> Any:
        return _build(
            KafkaConsumer,
            **self._common_configs(),
            group_id=group,
            enable_auto_commit=False,  # commit only what the worker finished
            auto_offset_reset="earliest",  # a new group starts from the beginning of the log
            max_poll_records=self._settings.batch_max_records,
            fetch_max_wait_ms=self._settings.batch_max_wait_ms,
            session_timeout_ms=self._timeouts.session_ms,
            heartbeat_interval_ms=self._timeouts.heartbeat_ms,
            max_poll_interval_ms=self._timeouts.max_poll_interval_ms,
            # Any message the producers may write must fit one partition fetch.
            max_partition_fetch_bytes=self._max_message_bytes,
            fetch_max_bytes=max(FETCH_MAX_BYTES, self._max_message_bytes),
        )


def _build(client_class: Any, **configs: Any) -> Any:
    """Construct a kafka-python client; if that fails, stop its network thread.

    kafka-python 3.0.12 starts the IO thread before the eager bootstrap in ``__init__``
    and leaks it when the bootstrap times out; a worker retrying through a broker
    outage would pile up one thread (and selector) per attempt.
    """
    network_clients: list[Any] = []

    def tracked_network_client(**kwargs: Any) -> Any:
        net = NetworkSelector(**kwargs)
        network_clients.append(KafkaNetClient(net=net, manager=_FailFastConnections(net, **kwargs)))
        return network_clients[-1]

    try:
        return client_class(**configs, kafka_client=tracked_network_client)
    except BaseException:
        for network_client in network_clients:
            with contextlib.suppress(Exception):
                network_client.close()
        raise


class _FailFastConnections(KafkaConnectionManager):  # type: ignore[misc]  # kafka is untyped
    """Connection manager that ends the bootstrap at a rejected login or certificate.

    Two kafka-python 3.0.12 gaps make a wrong password look like an outage, retried
    until the bootstrap deadline and then reported as "Unable to bootstrap":

    * it means to raise authentication failures from ``get_connection``, but records
      them only when ``_connect`` itself raises, while SASL and TLS handshake failures
      arrive through the connection's init future; recorded here instead, the next
      attempt raises the real error, within a second;
    * a read that returns data and then end-of-stream drops the data; the broker sends
      its "authentication failed" answer and closes the connection at once, so the
      answer was usually lost (see :func:`_data_before_close`).
    """

    async def _build_transport(self, node: Any, *args: Any, **kwargs: Any) -> Any:
        transport = await super()._build_transport(node, *args, **kwargs)
        transport._sock_recv = _data_before_close(transport._sock_recv)
        return transport

    async def _connect(self, node: Any, conn: Any, *args: Any, **kwargs: Any) -> None:
        await super()._connect(node, conn, *args, **kwargs)
        init = conn.init_future
        if init.failed() and _is_rejection(init.exception):
            self._auth_failures[node.node_id] = init.exception


def _data_before_close(sock_recv: Callable[[], tuple[bytes, Any]]) -> Callable[[], tuple[bytes, Any]]:
    """Wrap a transport's ``_sock_recv`` so bytes read together with a close are delivered.

    The transport aborts on any error from a read, without passing on what the same read
    returned; deferring the error to the next read (the closed socket is readable at
    once) lets the connection process the broker's last answer first.
    """
    pending: list[Any] = []

    def receive() -> tuple[bytes, Any]:
        if pending:
            return b"", pending.pop()
        data, error = sock_recv()
        if data and error is not None:
            pending.append(error)
            return data, None
        return data, error

    return receive


class KafkaProducerAdapter:
    """Sends batches and returns only once every message is acknowledged.

    The client is created on the first send, so a worker can start while the broker is
    still down; construction failures surface as :class:`BusUnavailable` and are retried.
    A message refused for its size raises :class:`MessageTooLarge` naming its key.
    """

    def __init__(self, factory: Callable[[], Any], send_timeout_s: float, translated: _Translator) -> None:
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
        too_large = [(message, error) for message, error in failures if isinstance(error, _TOO_LARGE)]
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


class KafkaConsumerAdapter:
    """One consumer-group member; offsets move only through :meth:`commit`.

    kafka-python consumers are not thread-safe; every use of the client happens under
    ``self._lock`` so the keep-alive thread of :meth:`processing` cannot interleave.
    """

    def __init__(
        self,
        factory: Callable[[], Any],
        group: str,
        topics: Sequence[str],
        keepalive_s: float,
        probe_ms: int,
        translated: _Translator,
    ) -> None:
        self._factory = factory
        self._group = group
        self._topics = list(topics)
        self._keepalive_s = keepalive_s
        self._probe_ms = probe_ms
        self._translated = translated
        self._lock = threading.RLock()
        self._consumer: Any = None

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        with self._lock, self._translated("poll"):
            consumer = self._client()
            if not consumer.assignment():
                # Joining (or rebalancing: eager assignors revoke everything first).
                # kafka-python 3.0.12 drops a JoinGroup answer that arrives between two
                # polls and sends a new one, so short polls can rebalance forever; give
                # the join room to complete inside this call.
                timeout_s = max(timeout_s, JOIN_POLL_S)
            batches = consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        # Partition order, then offset order within each: the order Kafka guarantees.
        return [_record(raw) for tp in sorted(batches) for raw in batches[tp]]

    def commit(self, records: Sequence[Record]) -> None:
        offsets = next_offsets(records)
        if not offsets:
            return
        with self._lock, self._translated("commit"):
            consumer = self._client()
            assigned = {(tp.topic, tp.partition) for tp in consumer.assignment()}
            lost = sorted(set(offsets) - assigned)
            owned = {
                TopicPartition(*tp): OffsetAndMetadata(offset, "", -1)
                for tp, offset in offsets.items()
                if tp in assigned
            }
            # The new owner's position is authoritative for partitions that moved; ours
            # would be at best redundant and at worst move its committed offset backwards.
            if owned:
                consumer.commit(owned)
        if lost:
            raise CommitLost(f"partitions {lost} were reassigned before the commit")

    def lag(self) -> dict[tuple[str, int], int]:
        with self._lock, self._translated("lag"):
            consumer = self._client()
            assigned = sorted(consumer.assignment())
            if not assigned:
                return {}
            ends = consumer.end_offsets(assigned, timeout_ms=self._probe_ms)
            starts = consumer.beginning_offsets(assigned, timeout_ms=self._probe_ms)
            return {
                (tp.topic, tp.partition): ends[tp] - _committed(consumer, tp, starts[tp], self._probe_ms)
                for tp in assigned
            }

    @contextlib.contextmanager
    def processing(self) -> Iterator[None]:
        """Pause fetching and keep polling in the background while the caller works.

        kafka-python leaves the group when ``poll`` is not called for
        ``max_poll_interval_ms``; heartbeats alone do not prove the loop is alive. With
        every partition paused, a background ``poll`` proves liveness (and completes a
        rebalance if one starts) without fetching records the caller has not asked for.
        """
        if self._consumer is None:  # never polled: nothing to keep alive
            yield
            return
        keeper = _KeepAlive(self._consumer, self._lock, self._keepalive_s, self._group)
        with self._lock:
            keeper.pause_assigned()
        keeper.start()
        try:
            yield
        finally:
            keeper.stop()
            with self._lock:  # local state only: cannot fail on the network
                paused = self._consumer.paused()
                if paused:
                    self._consumer.resume(*paused)

    def close(self) -> None:
        with self._lock:
            if self._consumer is not None:
                # Leaves the group at once, so the partitions move without waiting for
                # the session timeout; nothing is auto-committed.
                with self._translated("close consumer"):
                    self._consumer.close(autocommit=False)
                self._consumer = None

    def _client(self) -> Any:
        if self._consumer is None:
            consumer = self._factory()
            consumer.subscribe(self._topics, listener=_RebalanceLogger(self._group))
            self._consumer = consumer
        return self._consumer


def _record(raw: Any) -> Record:
    return Record(
        topic=raw.topic,
        partition=raw.partition,
        offset=raw.offset,
        # Never raises: undecodable bytes become lone surrogates the stages can reject,
        # and encode back to the same bytes (e.g. into the DLQ).
        key=raw.key.decode("utf-8", "surrogateescape") if raw.key is not None else None,
        value=raw.value,
        headers=tuple((name, bytes(value)) for name, value in raw.headers or ()),
        timestamp_ms=raw.timestamp,
    )


def _committed(consumer: Any, tp: Any, log_start: int, timeout_ms: int) -> int:
    # Nothing committed yet means the whole log is still to do (as a new owner would see
    # it with auto_offset_reset=earliest), not just what this member has not fetched.
    committed = consumer.committed(tp, timeout_ms=timeout_ms)
    return int(committed) if committed is not None else int(log_start)


class _KeepAlive(threading.Thread):
    """Polls a fully paused consumer until stopped, once the batch has run ``interval_s``.

    Why the polls are back to back and each waits ``KEEPALIVE_POLL_MS`` instead of a
    ``poll(timeout_ms=0)`` per second: kafka-python 3.0.12 discards a JoinGroup/SyncGroup
    that completes *between* two polls and sends a fresh JoinGroup on the next one, which
    starts another rebalance; spaced zero-timeout polls therefore rebalance forever once
    the group starts one. A poll that waits lets the join complete inside the call.
    Batches shorter than ``interval_s`` never poll at all.
    """

    def __init__(self, consumer: Any, lock: threading.RLock, interval_s: float, group: str) -> None:
        super().__init__(name=f"kafka-keepalive-{group}", daemon=True)
        self._consumer = consumer
        self._lock = lock
        self._interval_s = interval_s
        self._stopped = threading.Event()

    def run(self) -> None:
        if self._stopped.wait(self._interval_s):
            return
        failures = 0
        while not self._stopped.is_set():
            try:
                with self._lock:
                    self._tick()
            except Exception:
                # Never kill the keep-alive over a failed poll (broker restarting): the next
                # tick retries, and a lost membership surfaces at commit time as CommitLost.
                failures += 1
                level = logging.WARNING if failures == 1 else logging.DEBUG  # once, not every second
                log.log(level, "keep-alive poll failed", exc_info=True)
                self._stopped.wait(self._interval_s)

    def stop(self) -> None:
        self._stopped.set()
        self.join()

    def pause_assigned(self) -> None:
        assigned = self._consumer.assignment()
        if assigned:
            self._consumer.pause(*assigned)

    def _tick(self) -> None:
        returned = self._consumer.poll(timeout_ms=KEEPALIVE_POLL_MS)
        # Records only come back when a rebalance handed us new, unpaused partitions;
        # rewind them so the caller's next poll sees them, and pause again.
        for tp, raws in returned.items():
            self._consumer.seek(tp, raws[0].offset)
        self.pause_assigned()


class _RebalanceLogger(ConsumerRebalanceListener):  # type: ignore[misc]  # kafka is untyped
    """Logs partition movements; runs on kafka-python's IO thread, so it must not block."""

    def __init__(self, group: str) -> None:
        self._group = group

    def on_partitions_revoked(self, revoked: Any) -> None:
        log.info("group %s: partitions revoked: %s", self._group, _names(revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("group %s: partitions assigned: %s", self._group, _names(assigned))

    def on_partitions_lost(self, lost: Any) -> None:
        log.warning("group %s: partitions lost (evicted from the group): %s", self._group, _names(lost))


def _names(partitions: Any) -> list[str]:
    return sorted(f"{tp.topic}[{tp.partition}]" for tp in partitions)


def _message_limit(configs: dict[str, Any]) -> int:
    value = configs.get(MAX_MESSAGE_BYTES, {}).get("value")
    return int(value) if value is not None else 0


def _check_topic_errors(response: dict[str, Any], ignore: int) -> list[str]:
    """Raise the first real error of a topics response; return the topics with ``ignore``."""
    ignored = []
    for topic in response.get("topics", []):
        code = topic.get("error_code", 0)
        if code == ignore:
            ignored.append(str(topic.get("name")))
        elif code != 0:
            error = kafka_errors.for_code(code)(topic.get("error_message") or topic.get("name"))
            _raise_translated(f"topic {topic.get('name')}", error)
    return ignored


def _ssl_context(settings: KafkaSettings) -> ssl.SSLContext:
    return client_context(
        settings.ssl_cafile,
        check_hostname=settings.ssl_check_hostname,
        certfile=settings.ssl_certfile,
        keyfile=settings.ssl_keyfile,
        password=settings.ssl_password,
    )


class _Translator:
    """Turns kafka-python exceptions into the pipeline's error tree, as a context manager.

    It knows the connection settings, so a rejection says who was rejected and what to
    check, and never shows a password.
    """

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings

    @contextlib.contextmanager
    def __call__(self, action: str) -> Iterator[None]:
        try:
            yield
        except kafka_errors.KafkaError as exc:
            self.reraise(action, exc)
            _raise_translated(action, exc)

    def reraise(self, action: str, exc: BaseException) -> None:
        """Raise :class:`AuthenticationFailed` if ``exc`` is a rejection; else return."""
        if isinstance(exc, kafka_errors.SaslAuthenticationFailedError):
            raise AuthenticationFailed(f"kafka {action}: {self._login_rejected(exc)}") from exc
        certificate = certificate_error(exc)
        if certificate is not None:
            raise AuthenticationFailed(f"kafka {action}: {self._certificate_rejected(certificate)}") from exc

    def _login_rejected(self, exc: BaseException) -> str:
        settings = self._settings
        # The broker's reason names the mechanism, never the password.
        return (
            f"authentication failed for user {settings.sasl_username!r} ({settings.sasl_mechanism}) "
            f"at {settings.bootstrap}: {exc}; check kafka.sasl_username and kafka.sasl_password"
        )

    def _certificate_rejected(self, error: ssl.SSLCertVerificationError) -> str:
        settings = self._settings
        if error.verify_code in _NAME_MISMATCH:
            return (
                f"TLS hostname mismatch at {settings.bootstrap}: {_reason(error)}; connect "
                "by a name the broker certificate carries (or set kafka.ssl_check_hostname=false)"
            )
        trusted = (
            f"the CAs in kafka.ssl_cafile={settings.ssl_cafile}" if settings.ssl_cafile else "the system CAs"
        )
        return (
            f"TLS certificate of the broker at {settings.bootstrap} is not trusted by {trusted}: "
            f"{_reason(error)}; set kafka.ssl_cafile to the CA that signed it"
        )


def _reason(error: ssl.SSLCertVerificationError) -> str:
    return str(error.verify_message or error).rstrip(".")


def _is_rejection(exc: BaseException | None) -> bool:
    return isinstance(exc, kafka_errors.SaslAuthenticationFailedError) or certificate_error(exc) is not None


def _raise_translated(action: str, exc: Exception) -> NoReturn:
    if isinstance(exc, kafka_errors.CommitFailedError | kafka_errors.RebalanceInProgressError):
        # Our generation is over; the partitions' next owner redelivers the batch.
        raise CommitLost(f"{action}: {exc}") from exc
    if isinstance(exc, _TOO_LARGE):
        # A request over the broker's limits: retrying the same request cannot help.
        raise MessageTooLarge(f"kafka {action}: {exc}") from exc
    if getattr(exc, "retriable", False):
        # Broker down, timeouts, connection errors, leader moves: the same call can work later.
        raise BusUnavailable(f"kafka {action} failed: {exc}") from exc
    # Misconfiguration, authorization, protocol errors: retrying cannot help.
    raise FatalError(f"kafka {action} failed: {exc}") from exc
