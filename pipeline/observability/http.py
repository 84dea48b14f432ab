"""The daemon HTTP endpoint: ``/metrics``, ``/healthz``, ``/readyz`` and optional JSON routes.

``embedstream watch`` adds ``/search`` and ``/status``: the embedded engine admits one
process per store, so the process that owns it answers queries for the others. JSON routes
serve document text, so with a ``token`` they answer only requests that carry it
(``Authorization: Bearer <token>``, else 401); the probes and ``/metrics`` stay open for
Prometheus and orchestrators.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
MAX_BODY_BYTES = 1 << 20  # a query is small; refuse to buffer anything larger


@dataclass(frozen=True)
class Reply:
    """A JSON route's answer with a status other than 200 (a refusal, a bad request)."""

    status: int
    body: Any


# A JSON route returns the body of a 200 answer, or a Reply.
JsonRoute = Callable[[dict[str, Any]], Any]


def split_addr(addr: str) -> tuple[str, int]:
    """``host:port`` as bound: no host means loopback, no port means any free one."""
    host, _, port = addr.rpartition(":")
    return host or DEFAULT_HOST, int(port or 0)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine (every address it names)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def bearer(token: str) -> dict[str, str]:
    """The request header a client sends so that a server with ``token`` answers."""
    return {"Authorization": f"Bearer {token}"}


class DaemonServer:
    def __init__(
        self,
        addr: str,
        registry: CollectorRegistry,
        ready: Callable[[], tuple[bool, str]],
        routes: dict[str, JsonRoute] | None = None,
        *,
        token: str | None = None,
    ) -> None:
        handler = _handler(registry, ready, routes or {}, token)
        self._server = ThreadingHTTPServer(split_addr(addr), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> DaemonServer:
        self._thread.start()
        log.info("serving /metrics /healthz /readyz at %s", self.url)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(
    registry: CollectorRegistry,
    ready: Callable[[], tuple[bool, str]],
    routes: dict[str, JsonRoute],
    token: str | None,
) -> type[BaseHTTPRequestHandler]:
    expected = bearer(token)["Authorization"].encode() if token is not None else None

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif self.path == "/healthz":
                self._send(200, b"ok\n", "text/plain")
            elif self.path == "/readyz":
                is_ready, detail = ready()
                self._send(200 if is_ready else 503, (detail + "\n").encode(), "text/plain")
            elif self.path in routes:
                self._json(routes[self.path], {})
            else:
                self._send(404, b"not found\n", "text/plain")

        def do_POST(self) -> None:
            route = routes.get(self.path)
            if route is None:
                self._send(404, b"not found\n", "text/plain")
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self._error(413, f"request body over {MAX_BODY_BYTES} bytes")
                return
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except (json.JSONDecodeError, UnicodeDecodeError):
                self._error(400, "invalid JSON")
                return
            if not isinstance(body, dict):
                self._error(400, "expected a JSON object")
                return
            self._json(route, body)

        def _json(self, route: JsonRoute, body: dict[str, Any]) -> None:
            if not self._authorized():
                self._error(401, "missing or wrong token")
                return
            try:
                result = route(body)
            except Exception as exc:  # a bad query must not kill the daemon
                log.exception("HTTP route %s failed", self.path)
                self._error(500, str(exc))
                return
            status, payload = (result.status, result.body) if isinstance(result, Reply) else (200, result)
            self._send(status, json.dumps(payload).encode(), "application/json")

        def _authorized(self) -> bool:
            given = self.headers.get("Authorization", "").encode()
            # Constant time, so response timing does not reveal how much of a guess was right.
            return expected is None or hmac.compare_digest(given, expected)

        def _error(self, status: int, message: str) -> None:
            self._send(status, json.dumps({"error": message}).encode(), "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug(format, *args)

    return Handler
