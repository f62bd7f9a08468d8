"""Logging setup: text or JSON lines on stderr, every line redacted and none a flood.

Three filters sit on the one handler:
- aiohttp reports a malformed request with a traceback that quotes the raw
  request line; it becomes one short line naming the client and the error kind;
- a warning or error repeated with the same text is let through
  `_BURST` times per `_WINDOW_S` per logger and message, then counted and
  summarised once the window ends;
- every line passes through redaction (redaction.py) last.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from aiohttp.http_exceptions import HttpProcessingError

from .redaction import redact_text

__all__ = ["RateLimitFilter", "quiet_malformed_request", "setup_logging"]

_WINDOW_S = 10.0
_BURST = 5


def quiet_malformed_request(record: logging.LogRecord) -> bool:
    """aiohttp.server's "Error handling request" for a malformed request -> one line."""
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, HttpProcessingError):
        client = record.args[0] if isinstance(record.args, tuple) and record.args else "-"
        record.msg = "malformed request from %s: %s (answered %s)"
        record.args = (client, type(exc).__name__, exc.code or 400)
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
    return True


class RateLimitFilter(logging.Filter):
    """Repeated identical warnings/errors: the first few per window, then a count."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: dict[tuple[str, str], list[float | int]] = {}  # key -> [window start, count]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, str(record.msg))
        now = time.monotonic()
        seen = self._seen.get(key)
        if seen is None or now - seen[0] >= _WINDOW_S:
            suppressed = int(seen[1]) - _BURST if seen is not None else 0
            if len(self._seen) > 1000:
                self._seen.clear()
            self._seen[key] = [now, 1]
            if suppressed > 0:
                record.msg = f"{record.msg} [{suppressed} similar lines suppressed]"
            return True
        seen[1] += 1
        return seen[1] <= _BURST


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return redact_text(json.dumps(entry, ensure_ascii=False))


def setup_logging(level: str, fmt: str) -> None:
    """Route all loggers (ours, aiohttp's, redis-py's) to one filtered, redacting handler."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(quiet_malformed_request)
    handler.addFilter(RateLimitFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
