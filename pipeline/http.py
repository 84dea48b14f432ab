"""The daemon HTTP endpoint: ``/metrics``, ``/healthz``, ``/readyz`` and optional JSON routes.

``embedstream watch`` adds ``/search`` and ``/status``: the embedded engine admits one
process per store, so the process that owns it answers queries for the others.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

JsonRoute = Callable[[dict[str, Any]], Any]


class DaemonServer:
    def __init__(
        self,
        addr: str,
        registry: CollectorRegistry,
        ready: Callable[[], tuple[bool, str]],
        routes: dict[str, JsonRoute] | None = None,
    ) -> None:
        host, _, port = addr.rpartition(":")
        handler = _handler(registry, ready, routes or {})
        self._server = ThreadingHTTPServer((host or "127.0.0.1", int(port or 0)), handler)
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
    registry: CollectorRegistry, ready: Callable[[], tuple[bool, str]], routes: dict[str, JsonRoute]
) -> type[BaseHTTPRequestHandler]:
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
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except json.JSONDecodeError:
                self._send(400, b'{"error": "invalid JSON"}', "application/json")
                return
            self._json(route, body)

        def _json(self, route: JsonRoute, body: dict[str, Any]) -> None:
            try:
                result = route(body)
            except Exception as exc:  # a bad query must not kill the daemon
                log.exception("HTTP route %s failed", self.path)
                self._send(500, json.dumps({"error": str(exc)}).encode(), "application/json")
                return
            self._send(200, json.dumps(result).encode(), "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug(format, *args)

    return Handler
