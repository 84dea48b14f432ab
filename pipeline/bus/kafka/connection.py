"""Client configuration every kafka-python client shares (bootstrap, timeouts, TLS, SASL), built fail-fast."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.bus.kafka.errors import is_rejection
from pipeline.bus.kafka.library import KafkaConnectionManager, KafkaNetClient, NetworkSelector
from pipeline.config.settings import KafkaSettings
from pipeline.config.tls import client_context

#: Default ``max_message_bytes``: a vectors event for a long document is ~1 MB, and the
#: 1 MiB client and broker defaults would reject it.
MAX_REQUEST_SIZE = 2_000_000
#: The topic setting that must be at least ``max_message_bytes``.
MAX_MESSAGE_BYTES = "max.message.bytes"


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


class Connection:
    """How one bus reaches its cluster: every client it builds gets the same settings."""

    def __init__(self, settings: KafkaSettings, client_id: str, timeouts: KafkaTimeouts) -> None:
        self.settings = settings
        self.timeouts = timeouts
        self._client_id = client_id
        # Built once, so the TLS files are read before the first connection.
        self._ssl_context = _ssl_context(settings) if settings.uses_tls else None

    def build(self, client_class: Any, **configs: Any) -> Any:
        """A ``client_class`` client of this cluster, with ``configs`` on top of the common ones."""
        return _build(client_class, **self._common_configs(), **configs)

    def _common_configs(self) -> dict[str, Any]:
        settings = self.settings
        configs: dict[str, Any] = {
            "bootstrap_servers": settings.bootstrap.split(","),
            "client_id": self._client_id,
            "request_timeout_ms": self.timeouts.request_ms,
            "bootstrap_timeout_ms": self.timeouts.bootstrap_ms,
            "reconnect_backoff_max_ms": self.timeouts.reconnect_backoff_max_ms,
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


def _ssl_context(settings: KafkaSettings) -> ssl.SSLContext:
    return client_context(
        settings.ssl_cafile,
        check_hostname=settings.ssl_check_hostname,
        certfile=settings.ssl_certfile,
        keyfile=settings.ssl_keyfile,
        password=settings.ssl_password,
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
        if init.failed() and is_rejection(init.exception):
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
