"""Translation of kafka-python exceptions into :mod:`pipeline.core.errors` types, secrets left out."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator
from typing import NoReturn

from pipeline.bus.kafka.library import kafka_errors
from pipeline.config.settings import KafkaSettings
from pipeline.config.tls import certificate_error
from pipeline.core.errors import AuthenticationFailed, BusUnavailable, CommitLost, FatalError, MessageTooLarge

#: Errors that mean a request was over the broker's size limits.
TOO_LARGE = (kafka_errors.MessageSizeTooLargeError, kafka_errors.RecordListTooLargeError)
#: OpenSSL verify codes for "the certificate is valid, but for another name".
_NAME_MISMATCH = {62, 63, 64}  # X509_V_ERR_HOSTNAME/EMAIL/IP_ADDRESS_MISMATCH


class Translator:
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
            raise_translated(action, exc)

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


def is_rejection(exc: BaseException | None) -> bool:
    return isinstance(exc, kafka_errors.SaslAuthenticationFailedError) or certificate_error(exc) is not None


def raise_translated(action: str, exc: Exception) -> NoReturn:
    if isinstance(exc, kafka_errors.CommitFailedError | kafka_errors.RebalanceInProgressError):
        # Our generation is over; the partitions' next owner redelivers the batch.
        raise CommitLost(f"{action}: {exc}") from exc
    if isinstance(exc, TOO_LARGE):
        # A request over the broker's limits: retrying the same request cannot help.
        raise MessageTooLarge(f"kafka {action}: {exc}") from exc
    if getattr(exc, "retriable", False):
        # Broker down, timeouts, connection errors, leader moves: the same call can work later.
        raise BusUnavailable(f"kafka {action} failed: {exc}") from exc
    # Misconfiguration, authorization, protocol errors: retrying cannot help.
    raise FatalError(f"kafka {action} failed: {exc}") from exc
