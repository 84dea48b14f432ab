"""TLS client contexts built from PEM files, with file problems worded for operators.

Adapters (Kafka, Qdrant) build their :class:`ssl.SSLContext` here, so a missing or
unparseable file is reported before the first connection, by the setting that names it,
instead of as a handshake failure later. Nothing here logs or returns a key password.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from pydantic import SecretStr


def ca_problem(cafile: Path) -> str | None:
    """Why ``cafile`` cannot serve as trusted CA certificates, or None when it can."""
    if not cafile.is_file():
        return f"{cafile} does not exist"
    try:
        ssl.create_default_context(cafile=str(cafile))
    except (ssl.SSLError, ValueError) as exc:
        return f"{cafile} holds no PEM CA certificate ({_reason(exc)})"
    return None


def client_cert_problem(certfile: Path, keyfile: Path | None, password: SecretStr | None) -> str | None:
    """Why the client certificate and its key cannot be loaded, or None when they can."""
    for path in (certfile, keyfile):
        if path is not None and not path.is_file():
            return f"{path} does not exist"
    try:
        _load_client_cert(ssl.create_default_context(), certfile, keyfile, password)
    except (ssl.SSLError, ValueError) as exc:
        return (
            f"cannot load the client certificate {certfile} with its key ({_reason(exc)}): "
            "are both PEM, does the key match the certificate, is the key password right?"
        )
    return None


def client_context(
    cafile: Path | None,
    *,
    check_hostname: bool = True,
    certfile: Path | None = None,
    keyfile: Path | None = None,
    password: SecretStr | None = None,
) -> ssl.SSLContext:
    """A client context that verifies servers against ``cafile`` (unset: the system's CAs).

    Call the ``*_problem`` checks first: here an unusable file raises the library error.
    """
    context = ssl.create_default_context(cafile=str(cafile) if cafile is not None else None)
    context.check_hostname = check_hostname  # the certificate chain is verified either way
    if certfile is not None:
        _load_client_cert(context, certfile, keyfile, password)
    return context


def certificate_error(exc: BaseException | None) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind ``exc``, if any: client libraries
    (kafka-python, httpx) re-raise a failed handshake as their own error while handling
    the ssl one, so the cause is on the exception chain, not in its type."""
    for _ in range(10):
        if exc is None or isinstance(exc, ssl.SSLCertVerificationError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _load_client_cert(
    context: ssl.SSLContext, certfile: Path, keyfile: Path | None, password: SecretStr | None
) -> None:
    context.load_cert_chain(
        str(certfile),
        str(keyfile) if keyfile is not None else None,
        # A callable, so a missing password fails instead of prompting on the terminal.
        lambda: password.get_secret_value() if password is not None else "",
    )


def _reason(exc: Exception) -> str:
    # ssl.SSLError carries "[SSL] PEM lib (_ssl.c:3900)" style text; its reason is the readable part.
    return str(getattr(exc, "reason", None) or exc)
