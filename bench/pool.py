"""The parent's side of the load client: one or several client processes.

With ``procs == 1`` one process holds every stream and publishes (the classic
``make bench``). With ``procs > 1`` the streams are split over ``procs``
subscriber processes, each bound to its own source address 127.0.x.y (so
ephemeral ports never run out past ~28,000 streams), and one more process
publishes. Every window's latency histograms are merged bucket by bucket, so
percentiles are over all samples of all processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench import hist

__all__ = ["ClientPool", "LineReader", "split"]

ROOT = Path(__file__).resolve().parent.parent


class LineReader:
    """Reads a child's stdout lines in a thread so waits can time out."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.eof = False
        threading.Thread(target=self._run, args=(stream,), daemon=True).start()

    def _run(self, stream) -> None:
        for line in stream:
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def next_json(self, timeout: float) -> dict | None:
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                while self.lines:
                    line = self.lines.pop(0).strip()
                    if line.startswith("{"):
                        return json.loads(line)
                if self.eof:
                    return None
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)


def split(n: int, k: int) -> list[int]:
    """``n`` streams over ``k`` processes, sizes differing by at most one."""
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


class _Proc:
    def __init__(self, args: list[str]) -> None:
        self.p = subprocess.Popen(
            [sys.executable, "-m", "bench.client", *args],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        self.reader = LineReader(self.p.stdout)

    def send(self, line: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def recv(self, timeout: float, phase: str) -> dict:
        msg = self.reader.next_json(timeout)
        if not msg or msg.get("phase") != phase:
            raise RuntimeError(f"client {self.p.pid}: expected {phase}, got {msg}")
        return msg

    def close(self) -> None:
        if self.p.poll() is None:
            try:
                self.send("quit")
                assert self.p.stdin is not None
                self.p.stdin.close()
            except OSError:
                pass
            try:
                self.p.wait(20)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)


class ClientPool:
    """``procs`` subscriber processes (+ a publisher when ``procs > 1``) for one system."""

    def __init__(self, base_args: list[str], n: int, m: int, procs: int, drain: float,
                 payload: int = 0, trial: int = 0) -> None:
        self.sizes = split(n, max(procs, 1))
        self.drain = drain
        # an open stage may take minutes at 50,000 streams on a busy machine
        self.ready_timeout = max(150.0, n / 100)
        common = ["--merchants", str(m), "--drain", str(drain), "--payload", str(payload),
                  "--ready-timeout", str(self.ready_timeout)]
        self.subs: list[_Proc] = []
        self.pub: _Proc | None = None
        try:
            offset = 0
            for i, size in enumerate(self.sizes):
                args = [*base_args, *common, "--streams", str(size), "--offset", str(offset)]
                if procs > 1:  # own source address per process, trial and run (no TIME_WAIT
                    net = 1 + (os.getpid() + trial) % 250  # left by an earlier run holds ports)
                    args += ["--source-ip", f"127.{net}.{i // 250}.{2 + i % 250}"]
                self.subs.append(_Proc(args))
                offset += size
            self.pub = self.subs[0] if procs <= 1 else _Proc([*base_args, *common,
                                                              "--streams", "0"])
        except Exception:
            self.close()
            raise

    @property
    def all(self) -> list[_Proc]:
        extra = [self.pub] if self.pub is not None and self.pub not in self.subs else []
        return [*self.subs, *extra]

    def open(self, fraction: float) -> dict:
        """Open ``fraction`` of every process's share; merged ``ready`` info."""
        timeout = self.ready_timeout + 60
        for proc, size in zip(self.subs, self.sizes, strict=True):
            proc.send(f"open {round(size * fraction)}")
        out: dict = {"ready": 0, "opened": 0, "status": {}, "open_s": 0.0}
        for proc in self.subs:
            msg = proc.reader.next_json(timeout)
            if not msg or msg.get("phase") != "ready":
                raise RuntimeError(f"client not ready: {msg}")
            out["ready"] += msg["ready"]
            out["opened"] += msg["opened"]
            out["open_s"] = max(out["open_s"], msg["open_s"])
            for k, v in msg["status"].items():
                out["status"][k] = out["status"].get(k, 0) + v
        return out

    def window(self, rate: float, duration: float) -> dict:
        """One measured window: listen, publish, wait for delivery; merged result."""
        for proc in self.all:
            proc.send("listen")
        for proc in self.all:
            proc.recv(30, "listening")
        assert self.pub is not None
        self.pub.send(f"publish {rate:g} {duration:g}")
        pub = self.pub.recv(duration * 4 + 60, "published")
        for proc in self.all:
            proc.send(f"expect {pub['first']} {pub['published']}")
        results = [proc.recv(self.drain + 60, "result") for proc in self.all]
        return merge_results(pub, results)

    def close(self) -> None:
        for proc in self.all:
            proc.close()


def merge_results(pub: dict, results: list[dict]) -> dict:
    """Sum counts, merge histograms; latency percentiles over every sample."""
    out: dict = {k: v for k, v in pub.items() if k not in ("phase", "first", "publish_start_ns")}
    for key in ("expected", "delivered", "closed_during", "parse_errors"):
        out[key] = sum(r[key] for r in results)
    status: dict[str, int] = {}
    for r in results:
        for k, v in r["open_status"].items():
            status[k] = status.get(k, 0) + v
    out["open_status"] = status
    wall = max(r["wall_s"] for r in results)
    out["wall_s"] = wall
    out["client_cpu_pct"] = round(100 * sum(r["client_cpu_s"] for r in results) / wall, 1)
    out["client_procs"] = len(results)
    last = max(r["last_recv_ns"] for r in results)
    span = max(pub["publish_s"], (last - pub["publish_start_ns"]) / 1e9 if last else 0.0)
    out["delivered_per_s"] = round(out["delivered"] / span, 1) if span > 0 else 0.0
    merged = hist.merge(r["hist"] for r in results)
    out.update(hist.summary(merged, max(r["max_ns"] for r in results)))
    return out
