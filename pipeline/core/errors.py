"""One exception tree for embedstream; the type decides retry, dead-letter or crash.

::

    EmbedstreamError
    ├── CommitLost                batch done but its partitions moved: skip the commit
    ├── Refused                   a safety check stopped the operation: rerun with the flag it names
    ├── RetryableError            transient: retry with backoff, do not commit
    │   ├── BusUnavailable        broker down, produce/commit timed out
    │   └── StoreUnavailable      Qdrant down or timing out
    ├── PoisonError               this event can never succeed: dead-letter it, move on
    │   ├── InvalidEvent          bad JSON, schema violation, unknown schema_version
    │   ├── DocumentTooLarge      text over ``limits.max_doc_bytes`` / chunk cap
    │   ├── MessageTooLarge       a message the broker or client refuses for its size
    │   ├── EmptyDocument         nothing left after normalization
    │   ├── InvalidVectors        NaN/inf or wrong dimension from the encoder
    │   │   └── ForeignModel      vectors of another model than the index version's
    │   └── StoreRejected         the store refused this document's write (4xx, validation)
    └── FatalError                the process cannot go on: exit with a clear message
        ├── ConfigError           settings that contradict each other or the model
        ├── StoreLocked           another process owns the embedded store
        ├── AuthenticationFailed  credentials or certificates rejected (either side)
        └── ModelNotAvailable     model not found offline

Adapters translate library exceptions into these at the boundary (``raise ... from exc``)
so the stage loops never import kafka, qdrant or torch exception types.
"""

from __future__ import annotations

from typing import ClassVar


class EmbedstreamError(Exception):
    """Root of every error embedstream raises on purpose.

    A subclass names its ``reason`` on its class line (``class X(Parent, reason="x")``):
    the label that metrics, logs and dead-letter headers carry, kept stable when a class is
    renamed. Without one it shares its parent's label; ``retryable`` is inherited likewise.
    """

    retryable: ClassVar[bool] = False
    reason: ClassVar[str] = "error"

    def __init_subclass__(cls, *, reason: str | None = None, retryable: bool | None = None) -> None:
        super().__init_subclass__()
        if reason is not None:
            cls.reason = reason
        if retryable is not None:
            cls.retryable = retryable


class CommitLost(EmbedstreamError, reason="commit_lost"):
    """The batch was processed, but its partitions moved to another worker before the commit.

    The group rebalanced (this worker was too slow or was evicted), so the offsets can no
    longer be committed by us; the partitions' new owner resumes from the last committed
    offset and redelivers the batch. Idempotent writes make that redelivery safe, so the
    worker logs it and carries on instead of retrying (the commit can never succeed).
    """


class Refused(EmbedstreamError, reason="refused"):
    """A safety check refused an operation the user can still ask for explicitly."""


class RetryableError(EmbedstreamError, reason="transient", retryable=True):
    """A transient fault: the same call may succeed later."""


class BusUnavailable(RetryableError, reason="bus_unavailable"):
    """The broker is down, or a produce or commit timed out."""


class StoreUnavailable(RetryableError, reason="store_unavailable"):
    """Qdrant is down or timing out."""


class PoisonError(EmbedstreamError, reason="poison"):
    """This event can never be processed; it belongs in the dead-letter queue."""


class InvalidEvent(PoisonError, reason="invalid_event"):
    """Bad JSON, a schema violation or an unknown ``schema_version``."""


class DocumentTooLarge(PoisonError, reason="too_large"):
    """Text over ``limits.max_doc_bytes``, or more chunks than ``limits.max_chunks_per_doc``."""


class MessageTooLarge(PoisonError, reason="too_large"):
    """A message over the producer's ``max_request_size`` or the topic's ``max.message.bytes``.

    ``key`` and ``size`` say which message of a batch it was, so the caller can dead-letter
    the event that produced it and send the rest again.
    """

    def __init__(self, message: str, *, key: str | None = None, size: int | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.size = size


class EmptyDocument(PoisonError, reason="empty_text"):
    """Nothing is left of the text after normalization."""


class InvalidVectors(PoisonError, reason="invalid_vectors"):
    """NaN or infinite values, or a wrong dimension, from the encoder."""


class ForeignModel(InvalidVectors, reason="foreign_model"):
    """Vectors of another model than the index version's: an embed worker runs the wrong
    model. Dead-lettered (replayable once fixed), and the sink reports it on /readyz."""

    def __init__(self, message: str, *, fingerprint: str) -> None:
        super().__init__(message)
        self.fingerprint = fingerprint


class StoreRejected(PoisonError, reason="store_rejected"):
    """The store answered that this write can never succeed (validation error, 4xx)."""


class FatalError(EmbedstreamError, reason="fatal"):
    """The process cannot continue; the message tells the operator what to do."""


class ConfigError(FatalError, reason="config"):
    """One or more configuration problems; ``problems`` holds one line each, so a user
    who got three things wrong hears about all three at once."""

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problems))
        self.problems: tuple[str, ...] = problems


class StoreLocked(FatalError, reason="store_locked"):
    """Another process owns the embedded store (its WAL lock is held)."""


class AuthenticationFailed(FatalError, reason="auth_failed"):
    """A server refused our credentials, or we refused its certificate.

    Retrying cannot fix a wrong password, an untrusted CA or a certificate for another
    host name, so the process stops with the reason; the message never holds a secret.
    """


class ModelNotAvailable(FatalError, reason="model_not_available"):
    """The model is not on this machine, and nothing is downloaded at run time."""
