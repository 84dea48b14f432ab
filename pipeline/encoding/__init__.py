"""Text to vectors: the encoder backends, their plan, the model on disk and the cache.

The ``Encoder`` port lives here; its adapter is :mod:`pipeline.encoding.transformer`
(sentence-transformers on torch, with :mod:`pipeline.encoding.onnx` for small calls).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from pipeline.core.chunking import Span
from pipeline.core.events import Matrix


class Encoder(Protocol):
    """Turns text into full-dimension, L2-normalized float32 vectors."""

    @property
    def fingerprint(self) -> str: ...

    @property
    def max_tokens(self) -> int: ...

    def offsets(self, text: str) -> list[Span]: ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]: ...

    def encode_documents(self, texts: Sequence[str]) -> Matrix: ...

    def encode_queries(self, texts: Sequence[str]) -> Matrix: ...
