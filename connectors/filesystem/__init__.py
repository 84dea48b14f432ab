"""Filesystem source: a directory of text documents as a stream of ``ChangeEvent`` s.

:mod:`.source` holds the source and its pass, :mod:`.checkpoint` what it persists per file,
:mod:`.text` how a file's bytes become text and a title, :mod:`.paths` which files are walked.
"""

from __future__ import annotations

from connectors.filesystem.checkpoint import Checkpoint, FileState
from connectors.filesystem.paths import DEFAULT_EXCLUDE, DEFAULT_INCLUDE
from connectors.filesystem.source import RACY_NS, FilesystemSource
from connectors.filesystem.text import TEXT_EXTENSIONS, html_to_text, title_of

__all__ = [
    "DEFAULT_EXCLUDE",
    "DEFAULT_INCLUDE",
    "RACY_NS",
    "TEXT_EXTENSIONS",
    "Checkpoint",
    "FileState",
    "FilesystemSource",
    "html_to_text",
    "title_of",
]
