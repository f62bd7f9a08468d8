"""`server.workers > 1`: a supervisor process and N workers sharing the port (SO_REUSEPORT).

Each worker is a full gateway with its own Redis subscriptions, history and
limits. prometheus-client runs in multiprocess mode over a directory the
supervisor owns, so `/metrics` on any worker reports the sum over all of them.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from .serve import EXIT_CANNOT_START

__all__ = ["WORKER_ENV", "supervise"]

log = logging.getLogger(__name__)

WORKER_ENV = "GATEWAY_WORKER_INDEX"
_RESPAWN_DELAY_S = 1.0


def supervise(argv: list[str], workers: int, shutdown_timeout: float) -> int:
    metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
    procs: dict[int, subprocess.Popen[bytes]] = {}
    stopping = False

    def spawn(index: int) -> None:
        env = dict(os.environ, **{WORKER_ENV: str(index), "PROMETHEUS_MULTIPROC_DIR": metrics_dir})
        procs[index] = subprocess.Popen([sys.executable, "-m", "gateway", *argv], env=env)

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        for index in range(workers):
            spawn(index)
        log.info("supervisor: %d workers started", workers)
        while not stopping:
            for index, proc in list(procs.items()):
                if proc.returncode is None and proc.poll() == EXIT_CANNOT_START:
                    log.error("worker %d cannot start; stopping all workers", index)
                    forward(signal.SIGTERM, None)
                    break
                if proc.poll() is not None and not stopping:
                    log.error("worker %d exited with %s; respawning", index, proc.returncode)
                    time.sleep(_RESPAWN_DELAY_S)
                    spawn(index)
            time.sleep(0.2)
        deadline = time.monotonic() + shutdown_timeout + 2
        codes = []
        for proc in procs.values():
            try:
                codes.append(proc.wait(timeout=max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
        return 0 if all(code == 0 for code in codes) else 1
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
