"""Helpers for connector authors: per-document key states, rows as documents, rejects."""
