"""The payload fields every point of an index carries, and how versions are stored in them.

Both store adapters write and filter on these; the stages read ``DOC_KEY`` and ``VERSION``.
"""

from __future__ import annotations

from typing import Any

#: Payload fields every point of an index carries: which document it belongs to, and the
#: document version that wrote it. Guarded writes and sweeps are expressed over them.
DOC_KEY = "doc_key"
VERSION = "version"
#: Qdrant compares payload numbers as float64, exact only below 2**53, while versions are
#: up to 64-bit (mtime_ns, LSNs): adapters also store each version as two exact halves and
#: compare those (see :func:`version_parts`).
VERSION_HI = "version_hi"
VERSION_LO = "version_lo"
_LOW_BITS = 32


def version_parts(version: int) -> tuple[int, int]:
    """(high, low) 32-bit halves of a version: each is exact as a float64."""
    return version >> _LOW_BITS, version & ((1 << _LOW_BITS) - 1)


def with_version_parts(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` plus the halves of its version, for the adapters' exact comparisons."""
    if VERSION not in payload:
        return payload
    high, low = version_parts(int(payload[VERSION]))
    return {**payload, VERSION_HI: high, VERSION_LO: low}
