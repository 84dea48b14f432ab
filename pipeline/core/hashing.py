"""Stable keys: text normalization, content hashes and deterministic point ids.

Everything here is a pure function of its arguments; Python's ``hash()`` is never used
because it changes between processes.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import uuid

# Fixed namespace so point ids are identical across processes, hosts and releases.
POINT_NAMESPACE = uuid.UUID("5b0f4a8e-2f43-4c6e-9a53-6f1d3c2e7a10")

_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_MANY_BLANK_LINES = re.compile(r"\n{3,}")


def normalize_text(text: str) -> str:
    """Canonical form of a document: what is hashed, chunked and encoded.

    Cosmetic differences (line endings, trailing spaces, runs of blank lines, Unicode
    composition) must not count as a change, or a re-save would re-encode the file.
    """
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    text = _TRAILING_SPACE.sub("\n", text)
    text = _MANY_BLANK_LINES.sub("\n\n", text)
    return text.strip()


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def content_hash(text: str) -> str:
    """sha256 of the normalized text: equal hashes mean "nothing to re-index"."""
    return sha256_hex(normalize_text(text))


def point_id(doc_key: str, chunk_hash: str, occurrence: int) -> str:
    """Deterministic id of one chunk of one document.

    Keyed by the chunk's content (not its position) so an edit that shifts later chunks
    leaves their ids, and therefore their points, untouched; ``occurrence`` separates
    identical chunks repeated inside one document.
    """
    return str(uuid.uuid5(POINT_NAMESPACE, f"{doc_key}\x1f{chunk_hash}\x1f{occurrence}"))


def doc_state_id(doc_key: str) -> str:
    """Id of the per-document bookkeeping record (version, content hash, point ids)."""
    return str(uuid.uuid5(POINT_NAMESPACE, f"doc\x1f{doc_key}"))


def is_utf8(text: str) -> bool:
    """False for text holding surrogates: bytes that were not UTF-8, decoded with
    ``surrogateescape`` (the Kafka adapter's keys, os.scandir's file names)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
