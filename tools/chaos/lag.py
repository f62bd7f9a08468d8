"""A TCP proxy that can hold every byte from Redis for a fixed time: a slow link.

    python -m tools.chaos.lag --listen PORT --upstream PORT --delay-ms D

A gateway whose Redis URL names this proxy sees Redis ``D`` ms late while the
lag is on (SIGUSR1; SIGUSR2 turns it off, and it starts off): its subscriber
reads each message ``D`` ms after the other processes do, as a gateway on a
slower link or a busy host would. A tab that read an event on a fast process
and reconnects here at once finds this process's ring behind its
``Last-Event-ID`` while the event is still on its way: the interleaving of the
duplicate fixed in 56cb07d (``Stream.replay_before_live``).

Bytes towards Redis pass at once; bytes from Redis keep their order (a chunk
read while the lag is off still waits behind those held). When either side
closes, both do, so a restarted Redis looks to the gateway as it would
without the proxy. Loopback only; :class:`LagLink` starts it and stops it by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time

from tools.services import HOST, Service, free_port, port_open

__all__ = ["LagLink", "main"]

_CHUNK = 256 * 1024


class LagLink(Service):
    """The proxy process in front of the Redis on ``upstream``; :meth:`on`/:meth:`off`."""

    name = "chaos-lag"

    def __init__(self, upstream: int, delay_ms: float) -> None:
        super().__init__()
        self.upstream = upstream
        self.delay_ms = delay_ms
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> LagLink:
        from tools.gateway import REPO_ROOT, child_env  # the repo importable in the child

        self._spawn([sys.executable, "-m", "tools.chaos.lag", "--listen", str(self.port),
                     "--upstream", str(self.upstream), "--delay-ms", str(self.delay_ms)],
                    cwd=str(REPO_ROOT), env=child_env())
        self.await_ready(lambda: port_open(self.port), timeout)
        return self

    def on(self) -> None:
        self._signal(signal.SIGUSR1)

    def off(self) -> None:
        self._signal(signal.SIGUSR2)

    def stop(self) -> None:
        self._reap(signal.SIGTERM, 5)
        self._cleanup()


class _Lag:
    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.active = False

    def due(self) -> float:
        return time.monotonic() + (self.delay_s if self.active else 0.0)


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                lag: _Lag | None) -> None:
    """Copy until EOF; with ``lag``, each chunk is written when its due time comes."""
    if lag is None:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
        return
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def pump() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                return
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)  # the lag itself: nothing to await but time
            writer.write(data)
            await writer.drain()

    task = asyncio.ensure_future(pump())
    try:
        while not task.done() and (data := await reader.read(_CHUNK)):
            queue.put_nowait((lag.due(), data))
        queue.put_nowait((lag.due(), b""))
        await task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _serve(listen: int, upstream: int, lag: _Lag) -> None:
    async def handle(down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.wait_for(asyncio.open_connection(HOST, upstream), 3)
        except (OSError, TimeoutError):
            down_w.close()
            return
        links = [asyncio.ensure_future(_copy(down_r, up_w, None)),
                 asyncio.ensure_future(_copy(up_r, down_w, lag))]
        try:
            await asyncio.wait(links, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in links:
                task.cancel()
            await asyncio.gather(*links, return_exceptions=True)
            for w in (up_w, down_w):
                with contextlib.suppress(OSError):
                    w.close()

    server = await asyncio.start_server(handle, HOST, listen, reuse_address=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: setattr(lag, "active", True))
    loop.add_signal_handler(signal.SIGUSR2, lambda: setattr(lag, "active", False))
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.chaos.lag", description=__doc__)
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--upstream", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, required=True)
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.listen, args.upstream, _Lag(args.delay_ms / 1000)))


if __name__ == "__main__":
    main()
