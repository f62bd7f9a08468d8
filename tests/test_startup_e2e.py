"""Startup self-check: a heartbeat too long for common proxy idle timeouts is warned about."""

from __future__ import annotations

from typing import Any


def test_long_heartbeat_is_warned_about(gateway_factory: Any) -> None:
    gw = gateway_factory.start(config={"sse": {"heartbeat": 60}})
    assert "sse.heartbeat is 60s" in gw.log_text()


def test_usual_heartbeat_is_not_warned_about(gateway_factory: Any) -> None:
    gw = gateway_factory.start(config={"sse": {"heartbeat": 15}})
    assert "sse.heartbeat is" not in gw.log_text()
