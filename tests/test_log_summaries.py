"""The log rate limiter: suppressed counts are reported even when a line never recurs,
stream open/close lines are sampled per merchant, warnings go through the logger."""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator

import pytest

from gateway import logs


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    logs.setup_logging("INFO", "json")
    out = io.StringIO()
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(out)
    yield out
    logging.captureWarnings(False)
    root.handlers[:], _ = saved
    root.setLevel(saved[1])


def _lines(out: io.StringIO) -> list[dict[str, str]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_counts_of_suppressed_lines_are_flushed_without_a_recurrence(
    captured: io.StringIO,
) -> None:
    log = logging.getLogger("gateway.test")
    for _ in range(12):
        log.warning("redis: something failed (%s)", "X")
    assert len(_lines(captured)) == 5
    logs.flush_suppressed()  # the window has not ended: nothing yet
    assert len(_lines(captured)) == 5
    logs.flush_suppressed(final=True)  # as at shutdown
    summary = _lines(captured)[-1]
    assert summary["level"] == "WARNING"
    assert summary["message"].startswith("7 similar lines suppressed"), summary
    logs.flush_suppressed(final=True)
    assert len(_lines(captured)) == 6, "a count is reported once"


def test_stream_lines_are_sampled_per_merchant(captured: io.StringIO) -> None:
    log = logging.getLogger("gateway.handlers")
    for _ in range(300):
        log.info("stream open merchant=%s client=%s", "m1", "10.0.0.1", extra=logs.sampled("m1"))
    log.info("stream open merchant=%s client=%s", "m2", "10.0.0.2", extra=logs.sampled("m2"))
    logs.flush_suppressed(final=True)
    lines = _lines(captured)
    opens = [line for line in lines if line["message"].startswith("stream open merchant=m1")]
    assert len(opens) == 20
    assert any("merchant=m2" in line["message"] for line in lines)
    assert any(line["message"].startswith("280 similar lines suppressed") and "(m1)" in
               line["message"] for line in lines), lines[-2:]


def test_warnings_go_through_the_json_logger(captured: io.StringIO) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("a library complains", UserWarning, stacklevel=1)
    (line,) = _lines(captured)
    assert line["logger"] == "py.warnings" and "a library complains" in line["message"]


def test_a_storm_of_stream_lines_logs_a_few_and_counts_the_rest(
    captured: io.StringIO,
) -> None:
    """Decided before a line is built: per window 20 per merchant, 200 in all, then one
    count per message."""
    log = logging.getLogger("gateway.handlers")
    lines = logs.StreamLines(per_key=20, total=200, window_s=10.0)
    message = "stream open merchant=%s client=%s"
    for i in range(1000):  # 500 merchants, two streams each
        merchant = f"m{i % 500}"
        if lines.allow(message, merchant):
            log.info(message, merchant, "10.0.0.1")
    for _ in range(30):  # one merchant over its own share
        assert lines.allow("stream close merchant=%s", "m7") is not None
    handler = logging.getLogger().handlers[0]
    for summary in lines.expired("gateway.handlers", final=True):
        handler.handle(summary)
    out = _lines(captured)
    assert sum(line["message"].startswith("stream open merchant=") for line in out) == 200
    summaries = [line["message"] for line in out if "similar lines suppressed" in line["message"]]
    assert "800 similar lines suppressed in" in summaries[0], summaries
    assert summaries[0].endswith(": stream open merchant=%s client=%s (500 merchants)")
    assert summaries[1].startswith("10 similar lines suppressed") and "(merchant=m7)" in (
        summaries[1]), summaries
    assert lines.expired("gateway.handlers", final=True) == [], "a count is reported once"
