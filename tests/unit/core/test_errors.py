"""The error tree's labels are a public contract: metric labels, log fields and the
``error.reason`` header of every dead letter carry them, and alert rules match on them."""

from __future__ import annotations

import inspect

import pytest

from connectors.debezium.envelope import UnavailableValue
from connectors.sql import DatabaseUnavailable
from pipeline.core import errors
from pipeline.store.server.answers import Conflict

# (reason, retryable) of every class, as released; a change here breaks dashboards and DLQ filters.
RELEASED = {
    "EmbedstreamError": ("error", False),
    "CommitLost": ("commit_lost", False),
    "Refused": ("refused", False),
    "RetryableError": ("transient", True),
    "BusUnavailable": ("bus_unavailable", True),
    "StoreUnavailable": ("store_unavailable", True),
    "PoisonError": ("poison", False),
    "InvalidEvent": ("invalid_event", False),
    "DocumentTooLarge": ("too_large", False),
    "MessageTooLarge": ("too_large", False),
    "EmptyDocument": ("empty_text", False),
    "InvalidVectors": ("invalid_vectors", False),
    "ForeignModel": ("foreign_model", False),
    "StoreRejected": ("store_rejected", False),
    "FatalError": ("fatal", False),
    "ConfigError": ("config", False),
    "StoreLocked": ("store_locked", False),
    "AuthenticationFailed": ("auth_failed", False),
    "ModelNotAvailable": ("model_not_available", False),
    # declared beside their adapters and connectors
    "Conflict": ("fatal", False),
    "DatabaseUnavailable": ("source_unavailable", True),
    "UnavailableValue": ("unavailable_value", False),
}


def test_every_class_keeps_its_released_label_and_retry_policy() -> None:
    tree = [
        c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, errors.EmbedstreamError)
    ]
    declared = {c.__name__: c for c in [*tree, Conflict, DatabaseUnavailable, UnavailableValue]}
    assert {name: (c.reason, c.retryable) for name, c in declared.items()} == RELEASED


def test_a_subclass_without_a_reason_shares_its_parents_label_and_retry_policy() -> None:
    class Flaky(errors.StoreUnavailable):
        pass

    assert (Flaky.reason, Flaky.retryable) == ("store_unavailable", True)
    assert errors.StoreUnavailable.reason == "store_unavailable"


def test_a_subclass_may_change_its_retry_policy_without_touching_its_parent() -> None:
    class GaveUp(errors.BusUnavailable, reason="gave_up", retryable=False):
        pass

    assert (GaveUp.reason, GaveUp.retryable) == ("gave_up", False)
    assert (errors.BusUnavailable.reason, errors.BusUnavailable.retryable) == ("bus_unavailable", True)


def test_the_keywords_are_spelled_out() -> None:
    with pytest.raises(TypeError):
        type("Typo", (errors.PoisonError,), {}, reasn="typo")
