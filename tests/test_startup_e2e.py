"""Startup: a heartbeat too long for common proxy idle timeouts is warned about, a port
already in use exits non-zero naming it, postgres.pool_min connections open at start,
and not ready (/health/ready) before PostgreSQL has ever answered."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest
from ops_support import get_health, poll
from support import wait_until


def test_long_heartbeat_is_warned_about(gateway_factory: Any) -> None:
    gw = gateway_factory.start(config={"sse": {"heartbeat": 60}})
    assert "sse.heartbeat is 60s" in gw.log_text()


def test_usual_heartbeat_is_not_warned_about(gateway_factory: Any) -> None:
    gw = gateway_factory.start(config={"sse": {"heartbeat": 15}})
    assert "sse.heartbeat is" not in gw.log_text()


# -- a port already in use ---------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_port_in_use_exits_non_zero_naming_the_address(gateway_factory: Any, workers: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        gw = gateway_factory.start(
            config={"server": {"port": port, "workers": workers}}, wait=False
        )
        rc = gw.wait(timeout=15)  # TimeoutError (with the log) if it hangs
    out = gw.log_text()
    assert rc != 0, out[-2000:]
    assert str(port) in out, f"the output must name 127.0.0.1:{port}:\n{out[-2000:]}"
    assert "Traceback" not in out, f"one line naming the cause, not a traceback:\n{out[-3000:]}"


# -- postgres.pool_min -------------------------------------------------------------


def test_pool_min_connections_are_open_at_start(
    gateway_factory: Any, postgres_factory: Any
) -> None:
    pg = postgres_factory()  # its own server: every client backend but ours is the gateway's
    started = time.monotonic()
    gw = gateway_factory.start(config={"postgres": {"pool_min": 3}}, postgres=pg)

    def gateway_connections() -> int:
        rows = pg.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
            "AND pid <> pg_backend_pid() AND datname = %s",
            (pg.DATABASE,),
        )
        return int(rows[0][0])

    left = 10 - (time.monotonic() - started)
    try:
        wait_until(lambda: gateway_connections() >= 3, timeout=max(left, 0.1))
    except TimeoutError:
        pytest.fail(
            f"{gateway_connections()} PostgreSQL connections 10 s after start; "
            f"pool_min is 3 (log: {gw.log_text()[-1500:]})"
        )
    assert gw.returncode is None


async def test_not_ready_before_postgresql_ever_answered(
    gateway_factory: Any, postgres_factory: Any, merchant: Any
) -> None:
    """/health/ready leaves PostgreSQL out of its verdict only for a process that has
    verified shops before: one started during an outage has no cache and would
    refuse every stream a load balancer sent it."""
    pg = postgres_factory()
    await asyncio.to_thread(pg.stop)
    gw = await gateway_factory.astart(postgres=pg)
    status, body, _ = await get_health(gw, "/health/ready")
    assert status == 503 and body["postgres"]["status"] == "fail", body
    await asyncio.to_thread(pg.start)
    await poll(lambda: get_health(gw, "/health/ready"), lambda r: r[0] == 200, 15,
               what="/health/ready 200 once PostgreSQL answers")
    await asyncio.to_thread(pg.stop)  # it answered once: ready without it from now on
    await poll(lambda: get_health(gw), lambda r: r[0] == 503, 15, what="/health 503")
    status, body, _ = await get_health(gw, "/health/ready")
    assert status == 200 and body["postgres"]["status"] == "fail", body
