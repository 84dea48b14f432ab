"""The Qdrant server adapter's transport security: https verified against store.ca_file.

No Qdrant server binary is available to the tests (``EMBEDSTREAM_TEST_QDRANT_URL`` runs the
store contract suite against a real one), so a local HTTPS endpoint answers the one REST
call these tests make (``GET /collections``) the way Qdrant does. What is under test is real:
qdrant-client, httpx and the TLS handshake, with certificates from a throwaway CA.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipeline.core.errors import AuthenticationFailed
from pipeline.store.server import ServerStore
from tests.pki import CertificateAuthority

API_KEY = "qdrant-test-key"


@dataclass
class Endpoint:
    url: str
    ca: Path
    rogue_ca: Path
    seen_keys: list[str | None] = field(default_factory=list)


def handler_for(endpoint: Endpoint) -> type[BaseHTTPRequestHandler]:
    class QdrantLike(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            key = self.headers.get("api-key")
            endpoint.seen_keys.append(key)
            if key != API_KEY:
                self._answer(401, {"status": {"error": "Invalid api-key"}})
            else:
                self._answer(200, {"result": {"collections": []}, "status": "ok", "time": 0.0})

        def _answer(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:  # quiet test output
            pass

    return QdrantLike


@pytest.fixture
def https_endpoint(tmp_path: Path) -> Iterator[Endpoint]:
    ca = CertificateAuthority("qdrant test CA")
    server_cert = ca.issue("qdrant", ["127.0.0.1", "localhost"])
    server_cert.write_pem(tmp_path / "server.pem", tmp_path / "server.key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    endpoint = Endpoint(
        url="",
        ca=ca.write_pem(tmp_path / "ca.pem"),
        rogue_ca=CertificateAuthority("someone else").write_pem(tmp_path / "rogue.pem"),
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(endpoint))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    endpoint.url = f"https://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield endpoint
    server.shutdown()
    server.server_close()


def test_https_with_a_private_ca_sends_the_api_key(https_endpoint: Endpoint):
    """With store.ca_file the adapter trusts the private CA and sends the API key over TLS."""
    store = ServerStore(https_endpoint.url, API_KEY, ca_file=https_endpoint.ca)
    try:
        assert store.collections() == []
    finally:
        store.close()
    assert https_endpoint.seen_keys == [API_KEY]


def test_a_server_certificate_from_another_ca_is_refused_before_the_key_is_sent(https_endpoint: Endpoint):
    """An untrusted server certificate is AuthenticationFailed, and the API key never left."""
    store = ServerStore(https_endpoint.url, API_KEY, ca_file=https_endpoint.rogue_ca)
    try:
        with pytest.raises(AuthenticationFailed, match="is not trusted"):
            store.collections()
    finally:
        store.close()
    assert https_endpoint.seen_keys == []


def test_a_refused_api_key_is_authentication_failed(https_endpoint: Endpoint):
    """A 401 answer stops the caller with AuthenticationFailed naming the setting, not a retry."""
    store = ServerStore(https_endpoint.url, "not-the-key", ca_file=https_endpoint.ca)
    try:
        with pytest.raises(
            AuthenticationFailed, match=r"refused the request \(401\).*store\.api_key"
        ) as raised:
            store.collections()
    finally:
        store.close()
    assert "not-the-key" not in str(raised.value)
