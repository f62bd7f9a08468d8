"""The snapshot-storm load client, run in its own process(es) by ``python -m bench.snapshot_storm``.

The storm client (``bench/storm_client.py``) with one more command:

- ``storm``: open every stream at once, none with a ``Last-Event-ID`` (so each
  must get its merchant's job-state ``snapshot`` frame after ``connected``),
  retrying a refusal after its Retry-After (jittered, bounded attempts); wait
  until every stream has its snapshot (or ``--timeout`` s) -> ``snapshots``.

A stream's time to snapshot runs from its first connect attempt until the
``snapshot`` frame arrived (retries included). Each snapshot's jobs are counted
(``"job":`` members), so a short one is seen. Streams ``--first`` ..
``--first + --streams - 1`` of the whole storm are this process's; stream ``i``
belongs to merchant ``m{i % M}``.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from bench.hist import from_samples
from bench.storm_client import StormClient, StormStream
from bench.streams import cpu_seconds, run_client

__all__ = ["main"]


class SnapshotStream(StormStream):
    """A storm stream that notes when its snapshot frame came and how many jobs it held."""

    def __init__(self, owner: StormClient, merchant: int) -> None:
        super().__init__(owner, merchant)
        self.started_ns = 0
        self.snapshot_ns = 0
        self.jobs = -1  # jobs in the first snapshot; -1: none yet

    def frame(self, frame: bytes) -> None:
        if b"\nevent: snapshot\n" in b"\n" + frame + b"\n":
            if not self.snapshot_ns:
                self.snapshot_ns = time.time_ns()
                self.jobs = frame.count(b'"job":')
            self.owner.count("snapshot")
        super().frame(frame)


class SnapshotClient(StormClient):
    """The storm client's command loop, plus ``storm``."""

    async def command(self, parts: list[str]) -> dict:
        if parts[0] == "storm":
            return await self.cmd_storm()
        return await super().command(parts)

    async def opened(self, s: SnapshotStream) -> None:
        s.started_ns = time.time_ns()
        await self.connect(s, None)

    async def cmd_storm(self) -> dict:
        a = self.args
        streams = [SnapshotStream(self, (a.first + i) % a.merchants) for i in range(a.streams)]
        self.streams = list(streams)
        t0 = time.monotonic()
        tasks = [asyncio.ensure_future(self.opened(s)) for s in streams]  # all at once: the storm
        end = t0 + a.timeout
        while time.monotonic() < end and any(not s.snapshot_ns for s in streams):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        wall = time.monotonic() - t0
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        waits = [s.snapshot_ns - s.started_ns for s in streams if s.snapshot_ns]
        return {
            "phase": "snapshots", "streams": len(streams), "snapshots": len(waits),
            "open": sum(s.open for s in streams),
            "wrong_jobs": sum(1 for s in streams if s.snapshot_ns and s.jobs != a.jobs),
            "hist": from_samples(waits), "max_ns": max(waits, default=0),
            "wall_s": round(wall, 2), "counts": self.counts,
            "attempts_max": max((s.attempts for s in streams), default=0),
            "client_cpu_s": round(cpu_seconds() - self.cpu0, 2),
        }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.snapshot_client")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/api/realtime/events")
    p.add_argument("--streams", type=int, default=10_000, help="streams of this process")
    p.add_argument("--first", type=int, default=0, help="index of its first stream")
    p.add_argument("--merchants", type=int, default=1000)
    p.add_argument("--jobs", type=int, default=20, help="jobs each snapshot must hold")
    p.add_argument("--missed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--source-ip", default="", help="bind streams to this 127.x.y.z")
    p.add_argument("--timeout", type=float, default=120, help="s the storm may take")
    run_client(SnapshotClient(p.parse_args(argv)).run())


if __name__ == "__main__":
    main()
