"""Logging for the long-running front-ends: text for a terminal, or one JSON object per
line (``PARLEY_LOG_FORMAT=json``) for a log pipeline, each carrying the id of the
discussion it belongs to.

The discussion id is a context variable set while a discussion runs
(:func:`discussion`); every log record made in that context, in the turns' tasks too
(tasks copy the context they are created in), carries it. Messages are redacted
(:func:`core.errors.redact`) on the way out, whatever logged them.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

from core.errors import redact

DISCUSSION: contextvars.ContextVar[str | None] = contextvars.ContextVar("parley_discussion", default=None)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def discussion(discussion_id: str) -> Iterator[None]:
    token = DISCUSSION.set(discussion_id)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):  # reset from another context (a generator closed elsewhere)
            DISCUSSION.reset(token)


class _Context(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.discussion_id = DISCUSSION.get()
        return True


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
            "discussion_id": getattr(record, "discussion_id", None),
        }
        if record.exc_info:
            out["error"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = redact(super().format(record))
        did = getattr(record, "discussion_id", None)
        return f"{text} [discussion {did}]" if did else text


def configure(fmt: str = "text", level: int = logging.INFO) -> None:
    """Send every log record to stderr, as text or JSON lines, with the discussion id."""
    if fmt not in ("text", "json"):
        raise ValueError(f"PARLEY_LOG_FORMAT is text or json, not {fmt!r}")
    handler = logging.StreamHandler()
    handler.addFilter(_Context())
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
