"""Logging setup, called only by the CLI: JSON lines off a TTY, readable text on one."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

#: Third-party loggers kept at WARNING and above, whatever our level.
LIBRARIES = (
    "kafka", "httpx", "httpcore", "urllib3", "sentence_transformers", "transformers",
    "huggingface_hub", "filelock", "qdrant_client", "sqlalchemy", "psycopg", "asyncio",
)  # fmt: skip
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with every ``extra=`` field bound by the caller."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
        when = time.strftime("%H:%M:%S", time.localtime(record.created))
        suffix = " ".join(f"{k}={v}" for k, v in extras.items())
        line = f"{when} {record.levelname:<7} {record.name}: {record.getMessage()} {suffix}".rstrip()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure(level: str = "INFO", json_lines: bool | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    use_json = not sys.stderr.isatty() if json_lines is None else json_lines
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries speak at WARNING and above, even at our DEBUG: without a broker kafka-python
    # alone logs a hundred INFO lines before the one that matters, and at DEBUG it logs its
    # SASL configuration, password included (tests/e2e/test_secured_pipeline.py).
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
