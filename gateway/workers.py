"""`server.workers > 1`: a supervisor process and N workers sharing the port (SO_REUSEPORT).

Each worker is a full gateway with its own Redis subscriptions, history and
limits. prometheus-client runs in multiprocess mode over a directory the
supervisor owns, so `/metrics` on any worker reports the sum over all of them.

A worker follows its supervisor: when the supervisor dies, even by SIGKILL,
the kernel sends each worker SIGTERM (Linux `PR_SET_PDEATHSIG`), which drains it
as usual, so no orphan keeps the port or its streams.

A worker that dies is respawned after a capped exponential backoff (1 s, 2 s,
4 s ... at most 30 s; back to 1 s once a worker has run a minute), so a crash
loop costs a start every 30 s, not a busy spin. A worker that cannot start at
all (`EXIT_CANNOT_START`: the port is taken, say) stops every worker instead.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from prometheus_client import multiprocess as prom_multiprocess

from .serve import EXIT_CANNOT_START

__all__ = ["WORKER_ENV", "follow_supervisor", "respawn_delay_s", "supervise"]

log = logging.getLogger(__name__)

WORKER_ENV = "GATEWAY_WORKER_INDEX"
SUPERVISOR_ENV = "GATEWAY_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_RESPAWN_FIRST_S = 1.0
_RESPAWN_CAP_S = 30.0
_STABLE_S = 60.0  # a worker up this long was not crash-looping: its backoff starts over
_TICK_S = 0.2


def follow_supervisor() -> bool:
    """In a worker: SIGTERM when the supervisor dies. False when it is already gone."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            log.warning("worker: prctl(PR_SET_PDEATHSIG) failed: %s",
                        os.strerror(ctypes.get_errno()))
    # it may have died before prctl: then no signal will ever come
    return os.getppid() == int(os.environ.get(SUPERVISOR_ENV, "0"))


def respawn_delay_s(crashes: int) -> float:
    """Seconds before respawning a worker that died `crashes` times in a row (>= 1)."""
    return min(_RESPAWN_CAP_S, _RESPAWN_FIRST_S * 2 ** max(0, crashes - 1))


class _Workers:
    def __init__(self, argv: list[str], metrics_dir: str) -> None:
        self._argv = argv
        self._metrics_dir = metrics_dir
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self._started: dict[int, float] = {}
        self._crashes: dict[int, int] = {}
        self._respawn_at: dict[int, float] = {}
        self.stopping = False

    def spawn(self, index: int) -> None:
        env = dict(
            os.environ,
            **{
                WORKER_ENV: str(index),
                SUPERVISOR_ENV: str(os.getpid()),
                "PROMETHEUS_MULTIPROC_DIR": self._metrics_dir,
            },
        )
        argv = [sys.executable, "-m", "gateway", *self._argv]
        self.procs[index] = subprocess.Popen(argv, env=env)
        self._started[index] = time.monotonic()

    def forward(self, signum: int, _frame: object) -> None:
        self.stopping = True
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signum)

    def check(self) -> None:
        """One look at every worker: respawn the dead once their backoff is over, or
        stop them all when one cannot start."""
        now = time.monotonic()
        for index, proc in list(self.procs.items()):
            if index in self._respawn_at:
                if now >= self._respawn_at[index] and not self.stopping:
                    del self._respawn_at[index]
                    self.spawn(index)
                continue
            code = proc.poll()
            if code == EXIT_CANNOT_START:
                log.error("worker %d cannot start; stopping all workers", index)
                self.forward(signal.SIGTERM, None)
                return
            if code is None or self.stopping:
                continue
            # its `live*` gauges (open streams, redis_up, ...) leave the sum over workers
            prom_multiprocess.mark_process_dead(proc.pid, self._metrics_dir)
            stable = now - self._started[index] >= _STABLE_S
            crashes = 1 if stable else self._crashes.get(index, 0) + 1
            self._crashes[index] = crashes
            delay = respawn_delay_s(crashes)
            log.error("worker %d exited with %s; respawning in %.0f s", index, code, delay)
            self._respawn_at[index] = now + delay

    def wait_all(self, timeout: float) -> int:
        """0 when every worker exited 0 within `timeout` (the rest are killed), else 1.
        A worker already dead and waiting out its backoff was reported when it died."""
        deadline = time.monotonic() + timeout
        codes = []
        for index, proc in self.procs.items():
            if index in self._respawn_at:
                continue
            try:
                codes.append(proc.wait(timeout=max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
        return 0 if all(code == 0 for code in codes) else 1


def supervise(argv: list[str], workers: int, shutdown_timeout: float) -> int:
    metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
    pool = _Workers(argv, metrics_dir)
    signal.signal(signal.SIGTERM, pool.forward)
    signal.signal(signal.SIGINT, pool.forward)
    try:
        for index in range(workers):
            if pool.stopping:  # SIGTERM while starting: the rest are never spawned
                break
            pool.spawn(index)
        log.info("supervisor: %d workers started", workers)
        while not pool.stopping:
            pool.check()
            time.sleep(_TICK_S)
        return pool.wait_all(shutdown_timeout + 2)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
