"""File contents as indexable text: reading within a size limit, strict UTF-8 decoding with
binary detection, HTML to visible text, normalization, and the document's own title."""

from __future__ import annotations

import itertools
import re
from html.parser import HTMLParser
from pathlib import Path

from pipeline.core.hashing import normalize_text

__all__ = ["TEXT_EXTENSIONS", "SkipFileError", "html_to_text", "read_text", "title_of"]

TEXT_EXTENSIONS = (".txt", ".md", ".markdown", ".rst", ".html", ".htm", ".text")

_HTML_EXTS = frozenset({".html", ".htm"})
_MARKDOWN_EXTS = frozenset({".md", ".markdown", ".txt", ".text"})
_SNIFF_BYTES = 8192  # same window git uses to call a file binary


class SkipFileError(Exception):
    """Internal to the package: this file is not indexed this scan, for ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def read_text(path: Path, size: int, max_bytes: int, ext: str) -> tuple[str, str | None]:
    """Normalized text and title; the size is checked before reading a single byte."""
    if size > max_bytes:
        raise SkipFileError("too_large")
    with path.open("rb") as handle:
        raw = handle.read(max_bytes + 1)  # the file may have grown since stat
    if len(raw) > max_bytes:
        raise SkipFileError("too_large")
    decoded = _decode(raw)
    if ext in _HTML_EXTS:
        try:
            return html_to_text(decoded)
        except AssertionError:  # older html.parser's signal for markup it cannot parse
            raise SkipFileError("undecodable") from None
    text = normalize_text(decoded)
    return text, title_of(text, ext)


def _decode(raw: bytes) -> str:
    """Strict UTF-8 (BOM tolerated): guessing an encoding would index mojibake."""
    if b"\x00" in raw[:_SNIFF_BYTES]:
        raise SkipFileError("binary")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SkipFileError("undecodable") from None


_BLOCK_TAGS = frozenset(
    {
        "address", "article", "aside", "blockquote", "body", "caption", "dd", "details", "div",
        "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4",
        "h5", "h6", "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section", "summary",
        "table", "tbody", "thead", "tfoot", "tr", "ul",
    }
)  # fmt: skip
_CELL_TAGS = frozenset({"td", "th"})
_DROP_TAGS = frozenset({"script", "style", "template"})
_HTML_SPACE = re.compile(r"\s+")


class _HtmlText(HTMLParser):
    """Collects visible text, the ``<title>`` and the first ``<h1>`` of an HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)  # entities arrive already unescaped
        self.parts: list[str] = []
        self.title: str | None = None
        self.h1: str | None = None
        self._drop = 0
        self._pre = 0
        self._title_buf: list[str] | None = None
        self._h1_buf: list[str] | None = None
        self._at_space = True  # collapse HTML whitespace across element boundaries

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:  # noqa: ARG002
        if tag in _DROP_TAGS:
            self._drop += 1
        elif tag == "title":
            self._title_buf = []
        else:
            if tag == "h1" and self.h1 is None:
                self._h1_buf = []
            self._pre += tag == "pre"
            self._break(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _DROP_TAGS:
            self._drop = max(0, self._drop - 1)
        elif tag == "title" and self._title_buf is not None:
            self.title = self.title or _one_line("".join(self._title_buf))
            self._title_buf = None
        elif tag != "br":
            if tag == "h1" and self._h1_buf is not None:
                self.h1 = _one_line("".join(self._h1_buf))
                self._h1_buf = None
            self._pre = max(0, self._pre - (tag == "pre"))
            self._break(tag)

    def handle_data(self, data: str) -> None:
        if self._drop:
            return
        if self._title_buf is not None:
            self._title_buf.append(data)
            return
        if not self._pre:
            data = _HTML_SPACE.sub(" ", data)
            data = data.lstrip() if self._at_space else data
        if data:
            self._emit(data)
            if self._h1_buf is not None:
                self._h1_buf.append(data)

    def _break(self, tag: str) -> None:
        """Block elements become blank lines so paragraphs survive as chunk boundaries."""
        if tag == "br":
            self._emit("\n")
        elif tag in _BLOCK_TAGS:
            self._emit("\n\n")
        elif tag in _CELL_TAGS and not self._at_space:
            self._emit(" ")

    def _emit(self, text: str) -> None:
        self.parts.append(text)
        self._at_space = text[-1:].isspace()


def _one_line(text: str) -> str | None:
    return _HTML_SPACE.sub(" ", text).strip() or None


def html_to_text(html: str) -> tuple[str, str | None]:
    """Visible text of an HTML page (normalized) and its title (``<title>``, else first ``<h1>``)."""
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    return normalize_text("".join(parser.parts)), parser.title or parser.h1


_ATX_H1 = re.compile(r"^ {0,3}#[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_SETEXT_H1 = re.compile(r"^ {0,3}=+[ \t]*$")
_RST_ADORNMENT = re.compile(r"^([=\-`:'\"~^_*+#<>.])\1{2,}[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")


def title_of(text: str, ext: str) -> str | None:
    """The document's own title, so search results show it rather than a file name."""
    ext = ext.lower()
    if ext in _HTML_EXTS:
        return html_to_text(text)[1]
    if ext == ".rst":
        return _rst_title(text.splitlines())
    if ext in _MARKDOWN_EXTS:
        return _markdown_title(text.splitlines())
    return None


def _markdown_title(lines: list[str]) -> str | None:
    """First ``# heading`` (or ``===`` underlined line); front matter and code fences
    are skipped because a ``# comment`` inside a shell snippet is not a title."""
    in_fence = False
    for i in range(_front_matter_end(lines), len(lines)):
        line = lines[i]
        if _FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and (title := _markdown_heading(lines, i)):
            return title
    return None


def _markdown_heading(lines: list[str], i: int) -> str | None:
    if match := _ATX_H1.match(lines[i]):
        return match.group(1).strip() or None
    is_setext = i + 1 < len(lines) and _SETEXT_H1.match(lines[i + 1])
    return lines[i].strip() or None if is_setext else None


def _front_matter_end(lines: list[str]) -> int:
    if not lines or lines[0].strip() != "---":
        return 0
    for i in range(1, len(lines)):
        if lines[i].strip() in ("---", "..."):
            return i + 1
    return 0


def _rst_title(lines: list[str]) -> str | None:
    """First unindented text line underlined with an adornment (``===``, ``---``, ...)."""
    for line, below in itertools.pairwise(lines):
        is_text = bool(line.strip()) and not line[0].isspace() and not _RST_ADORNMENT.match(line)
        if is_text and _RST_ADORNMENT.match(below):
            return line.strip()
    return None
