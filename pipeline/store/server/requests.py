"""Request sizing: writes are split so each JSON body stays well under the server's limit."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TypeVar

from pipeline.store import PointWrite

Item = TypeVar("Item")
#: JSON bytes of one vector component at most (``-1.2345678901234567e-05,``).
_FLOAT_JSON_BYTES = 24
#: JSON bytes of a point id with its quotes and separators (UUIDs are 36 characters).
_ID_JSON_BYTES = 48
#: Slack per point for the keys ``id``, ``vector``, ``payload`` and the braces.
_POINT_JSON_BYTES = 48


def split_by_bytes(items: Sequence[Item], size: Callable[[Item], int], limit: int) -> list[list[Item]]:
    """Consecutive groups of ``items`` whose sizes add up to at most ``limit`` each.

    Order is kept. An item larger than ``limit`` on its own goes alone: the server
    decides about it (and a 4xx then rejects that item's event only).
    """
    groups: list[list[Item]] = []
    current: list[Item] = []
    used = 0
    for item in items:
        cost = size(item)
        if current and used + cost > limit:
            groups.append(current)
            current, used = [], 0
        current.append(item)
        used += cost
    if current:
        groups.append(current)
    return groups


def estimated_point_bytes(point: PointWrite) -> int:
    """An upper bound on the point's share of an upsert request's JSON body."""
    payload = len(json.dumps(point.payload, default=str, ensure_ascii=False).encode())
    return _POINT_JSON_BYTES + _ID_JSON_BYTES + _FLOAT_JSON_BYTES * len(point.vector) + payload


def id_bytes(point_id: str) -> int:
    return _ID_JSON_BYTES + max(0, len(point_id) - 36)
