"""embedstream: keep a Qdrant vector index in step with changing documents."""

__version__ = "0.1.0"
