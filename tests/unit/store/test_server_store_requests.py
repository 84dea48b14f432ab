"""Pure parts of the Qdrant server adapter: request splitting, the clear-text key rule, answers."""

from __future__ import annotations

import json
import uuid

import httpx
import numpy as np
import pytest
from qdrant_client import models as qm
from qdrant_client.http.exceptions import UnexpectedResponse

from pipeline.core.errors import (
    AuthenticationFailed,
    ConfigError,
    FatalError,
    StoreRejected,
    StoreUnavailable,
)
from pipeline.store import PointWrite
from pipeline.store.server.answers import answer_error, refuse_clear_text_key
from pipeline.store.server.requests import estimated_point_bytes, split_by_bytes


def test_groups_keep_order_and_stay_under_the_limit():
    """Items are grouped in order, each group's total at most the limit, none lost."""
    sizes = [3, 4, 2, 5, 1, 1, 6]

    groups = split_by_bytes(sizes, lambda size: size, 7)

    assert [item for group in groups for item in group] == sizes
    assert all(sum(group) <= 7 for group in groups)
    assert groups == [[3, 4], [2, 5], [1, 1], [6]]


def test_an_item_larger_than_the_limit_goes_alone():
    """One item over the limit forms its own group; its neighbours are grouped as usual."""
    groups = split_by_bytes([2, 2, 50, 2, 2], lambda size: size, 5)

    assert groups == [[2, 2], [50], [2, 2]]


def test_nothing_to_split_gives_no_request():
    """An empty write makes no request at all."""
    assert split_by_bytes([], len, 10) == []


def test_point_estimate_bounds_the_json_qdrant_client_sends():
    """The estimate is at least the point's real share of an upsert body, so requests stay under the cap."""
    rng = np.random.default_rng(0)
    points = [
        PointWrite(
            str(uuid.uuid4()),
            rng.normal(size=384).astype(np.float32).tolist(),
            {"doc_key": f"fs/dir/file-{i}.md", "version": 10**12, "text": "zürich ünïcode " * 40},
        )
        for i in range(20)
    ]
    body = qm.PointsList(
        points=[qm.PointStruct(id=p.id, vector=list(p.vector), payload=p.payload) for p in points]
    ).model_dump_json()

    assert len(body.encode()) <= sum(estimated_point_bytes(p) for p in points)


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:6333", "http://localhost:6333", "http://[::1]:6333", "https://qdrant.example:6333"],
)
def test_api_key_may_go_to_loopback_or_over_https(url):
    """An API key is sent over https anywhere, and over http only to a loopback address."""
    refuse_clear_text_key(url, "key", allowed=False)


def test_api_key_over_plain_http_to_another_host_is_refused_unless_allowed():
    """http:// to a remote host with an API key is a ConfigError that names the way out."""
    with pytest.raises(ConfigError, match=r"store\.allow_insecure_api_key"):
        refuse_clear_text_key("http://qdrant:6333", "key", allowed=False)
    refuse_clear_text_key("http://qdrant:6333", "key", allowed=True)
    refuse_clear_text_key("http://qdrant:6333", None, allowed=False)


def answer(status: int, error: str = "Wrong input: Vector dimension error") -> UnexpectedResponse:
    body = json.dumps({"status": {"error": error}, "time": 0.001}).encode()
    return UnexpectedResponse(status, "", body, httpx.Headers())


@pytest.mark.parametrize(
    ("status", "write", "expected"),
    [
        (400, True, StoreRejected),
        (413, True, StoreRejected),
        (422, True, StoreRejected),
        (404, True, FatalError),
        (400, False, FatalError),
        (401, True, AuthenticationFailed),
        (403, False, AuthenticationFailed),
        (429, True, StoreUnavailable),
        (503, True, StoreUnavailable),
    ],
)
def test_server_answers_map_to_retry_dead_letter_or_stop(status, write, expected):
    """4xx to a write is poison (but 404/409 and auth), 429/5xx transient, 401/403 authentication."""
    error = answer_error(answer(status), "https://qdrant.example", write=write)

    assert type(error) is expected


def test_a_rejected_write_carries_the_servers_message():
    """The dead letter says what Qdrant objected to, not just the status."""
    error = answer_error(
        answer(400, "Wrong input: Vector dimension error: expected 8, got 5"), "u", write=True
    )

    assert "expected 8, got 5" in str(error)
