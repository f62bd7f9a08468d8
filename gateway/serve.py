"""Run one gateway process: listen, wait for SIGTERM/SIGINT, drain, exit."""

from __future__ import annotations

import asyncio
import logging
import signal
import warnings
from typing import Any

import psycopg2
from aiohttp import web

from .app import begin_draining, create_app
from .config import Config
from .web.server import GatewayRunner

__all__ = ["EXIT_CANNOT_START", "serve"]

log = logging.getLogger(__name__)

EXIT_CANNOT_START = 3  # the supervisor of several workers stops on it instead of respawning

_PROXY_IDLE_TIMEOUT_S = 55


def _self_check(cfg: Config) -> None:
    if cfg.sse.heartbeat >= _PROXY_IDLE_TIMEOUT_S:
        log.warning(
            "sse.heartbeat is %ss: common proxy idle timeouts (60 s) will cut idle streams",
            cfg.sse.heartbeat,
        )


def _quiet_aiopg(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """During PostgreSQL outages aiopg reports a connection it already closed while
    collecting it, and leaves the failure of a dead connection's waiter unretrieved:
    nothing to act on (merchants.py reports the outage once), so not printed."""
    message = context.get("message")
    if message == "Unclosed connection" and "connection" in context:
        log.debug("aiopg: collected a connection it had already closed")
        return
    if message == "Future exception was never retrieved" and isinstance(
        context.get("exception"), psycopg2.Error
    ):
        log.debug("aiopg: a closed connection's waiter failed: %s", context["exception"])
        return
    loop.default_exception_handler(context)


async def serve(cfg: Config, *, reuse_port: bool = False) -> int:
    """Run until SIGTERM/SIGINT; the exit code (EXIT_CANNOT_START when it cannot listen)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # from the start: a stop while starting counts
        loop.add_signal_handler(sig, stop.set)
    _self_check(cfg)
    loop.set_exception_handler(_quiet_aiopg)
    # aiopg forces its own ResourceWarnings to "always" and prints them on stderr;
    # the same event reaches _quiet_aiopg through the loop, so this copy is noise
    warnings.filterwarnings("ignore", "Unclosed connection", ResourceWarning, r"aiopg\.")
    app = create_app(cfg)
    runner = GatewayRunner(
        app,
        handler_cancellation=True,  # a client that leaves cancels its stream handler at once
        access_log=None,  # stream open/close lines are logged by the handler, redacted
        shutdown_timeout=cfg.server.shutdown_timeout,
    )
    await runner.setup()
    if stop.is_set():  # stopped while starting: never listen
        await runner.cleanup()
        log.info("stopped before listening")
        return 0
    site = web.TCPSite(
        runner, cfg.server.host, cfg.server.port, reuse_port=reuse_port, backlog=4096
    )
    try:
        await site.start()
    except OSError as exc:
        log.error(
            "cannot listen on %s:%s: %s", cfg.server.host, cfg.server.port, exc.strerror or exc
        )
        await runner.cleanup()
        return EXIT_CANNOT_START
    for address in runner.addresses:
        log.info("listening on %s:%s", *address[:2])
    await stop.wait()
    begin_draining(app)  # readiness 503 first,
    await site.stop()  # then the listener closes,
    log.info("listener closed")
    await runner.cleanup()  # then app.py's on_shutdown drains the streams
    log.info("stopped")
    return 0

