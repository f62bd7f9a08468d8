"""Logging setup: text or JSON lines on stderr, every line redacted and none a flood.

Three filters sit on the one handler:
- aiohttp reports a malformed request with a traceback that quotes the raw
  request line; it becomes one short line naming the client and the error kind;
- a warning or error repeated with the same text is let through `_BURST`
  times per `_WINDOW_S` per logger and message (an INFO line logged with
  `extra=sampled(key)`, `_SAMPLED_BURST` times per message and key), then
  counted; the count is reported on its next occurrence or, at the latest, by
  `flush_suppressed()` (every few seconds, and at shutdown);
- every line passes through `redact_text` last.

A stream's open and close lines are decided before they are built
(`STREAM_LINES.allow`): a line a storm would repeat costs a dict lookup, not
a record, a format and a redaction. Per `_WINDOW_S`, each message is logged
`_SAMPLED_BURST` times per merchant and `_STREAM_LINES_TOTAL` times in all;
the rest are counted and reported in one line per message when the window
ends (`flush_suppressed`). Every stream is still counted in the metrics.

Python warnings (e.g. redis-py's at startup) go through the same handler.

Redaction is redaction.py's.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

from .redaction import redact_text

__all__ = [
    "STREAM_LINES",
    "RateLimitFilter",
    "StreamLines",
    "flush_suppressed",
    "quiet_malformed_request",
    "sampled",
    "setup_logging",
]

_WINDOW_S = 10.0
_BURST = 5
_SAMPLED_BURST = 20
_STREAM_LINES_TOTAL = 200  # stream open (close) lines per window, all merchants together
_filters: list[tuple[RateLimitFilter, logging.Handler]] = []


def sampled(key: str) -> dict[str, str]:
    """`extra=` of an INFO line a storm may repeat: rate-limited per message and `key`."""
    return {"sampled": key}


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
    """Repeated identical warnings/errors (and SAMPLED lines): the first few per
    window, then a count."""

    def __init__(self) -> None:
        super().__init__()
        # (logger, message, sample key) -> [window start, count, a record of it]
        self._seen: dict[tuple[str, str, str], list[Any]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "summary", False):
            return True
        sample = getattr(record, "sampled", None)
        if record.levelno < logging.WARNING and sample is None:
            return True
        burst = _BURST if sample is None else _SAMPLED_BURST
        key = (record.name, str(record.msg), str(sample or ""))
        now = time.monotonic()
        seen = self._seen.get(key)
        if seen is None or now - seen[0] >= _WINDOW_S:
            suppressed = int(seen[1]) - burst if seen is not None else 0
            if len(self._seen) > 1000:
                self._seen.clear()
            self._seen[key] = [now, 1, record]
            if suppressed > 0:
                record.msg = f"{record.msg} [{suppressed} similar lines suppressed]"
            return True
        seen[1] += 1
        return bool(seen[1] <= burst)

    def expired(self, final: bool = False) -> list[logging.LogRecord]:
        """Summaries of the windows that ended (all of them when `final`) with lines
        suppressed; those windows are forgotten."""
        now = time.monotonic()
        summaries = []
        for key, (started, count, record) in list(self._seen.items()):
            if not final and now - started < _WINDOW_S:
                continue
            del self._seen[key]
            burst = _BURST if not key[2] else _SAMPLED_BURST
            if count > burst:
                about = f" ({key[2]})" if key[2] else ""
                summary = logging.makeLogRecord({
                    "name": record.name, "levelno": record.levelno,
                    "levelname": record.levelname, "summary": True,
                    "msg": "%d similar lines suppressed in %.0f s: %s%s",
                    "args": (count - burst, min(now - started, _WINDOW_S), record.msg, about),
                })
                summaries.append(summary)
        return summaries


class StreamLines:
    """Which of a storm's stream open/close lines are logged, decided before the line
    is built: per window, `per_key` lines per message and merchant, `total` per message
    in all; the rest counted, one summary line per message when the window ends."""

    def __init__(self, per_key: int = _SAMPLED_BURST, total: int = _STREAM_LINES_TOTAL,
                 window_s: float = _WINDOW_S) -> None:
        self._per_key = per_key
        self._total = total
        self._window_s = window_s
        self._started = time.monotonic()
        self._counts: dict[tuple[str, str], int] = {}  # (message, key) -> lines this window
        self._logged: dict[str, int] = {}  # message -> lines logged this window
        self._suppressed: dict[str, dict[str, None]] = {}  # message -> keys of lines not logged
        self._skipped: dict[str, int] = {}  # message -> lines not logged
        self._pending: list[tuple[str, int, int, str, float]] = []

    def allow(self, message: str, key: str) -> bool:
        """Whether the line `message` of `key` (a merchant) is logged; if not, counted."""
        now = time.monotonic()
        if now - self._started >= self._window_s:
            self._roll(now)
        counts = self._counts
        seen = counts.get((message, key), 0)
        counts[message, key] = seen + 1
        logged = self._logged.get(message, 0)
        if seen < self._per_key and logged < self._total:
            self._logged[message] = logged + 1
            return True
        self._skipped[message] = self._skipped.get(message, 0) + 1
        keys = self._suppressed.setdefault(message, {})
        if len(keys) < 100_000:
            keys[key] = None
        return False

    def _roll(self, now: float) -> None:
        elapsed = min(now - self._started, self._window_s)
        for message, count in self._skipped.items():
            keys = self._suppressed.get(message, {})
            only = next(iter(keys)) if len(keys) == 1 else ""
            self._pending.append((message, count, len(keys), only, elapsed))
        del self._pending[:-100]  # never flushed (no logging set up): bounded all the same
        self._started = now
        self._counts, self._logged, self._suppressed, self._skipped = {}, {}, {}, {}

    def expired(self, name: str, final: bool = False) -> list[logging.LogRecord]:
        """Summaries (records of logger `name`) of the windows that ended (the current
        one too when `final`); each reported once."""
        now = time.monotonic()
        if final or now - self._started >= self._window_s:
            self._roll(now)
        pending, self._pending = self._pending, []
        return [logging.makeLogRecord({
            "name": name, "levelno": logging.INFO, "levelname": "INFO", "summary": True,
            "msg": "%d similar lines suppressed in %.0f s: %s (%s)",
            "args": (count, elapsed, message, f"merchant={only}" if only else f"{keys} merchants"),
        }) for message, count, keys, only, elapsed in pending]


STREAM_LINES = StreamLines()
_STREAM_LINES_LOGGER = "gateway.handlers"


def flush_suppressed(final: bool = False) -> None:
    """Log the counts of suppressed lines whose window ended (every window: `final`)."""
    for rate_limit, handler in _filters:
        for summary in rate_limit.expired(final):
            handler.handle(summary)
        for summary in STREAM_LINES.expired(_STREAM_LINES_LOGGER, final):
            handler.handle(summary)


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
    rate_limit = RateLimitFilter()
    handler.addFilter(rate_limit)
    _filters[:] = [(rate_limit, handler)]
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)  # warnings.warn(...) -> logger "py.warnings", this handler
