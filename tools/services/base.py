"""The process core every throwaway service shares, and its one readiness wait.

A :class:`Service` owns one child process (own session, bound to 127.0.0.1,
stopped by its own PID), one temp dir and one log file. :meth:`Service.await_ready`
is the only ready-wait loop of the harness: each service hands it its own check.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "HOST",
    "NotReadyError",
    "Service",
    "ServiceError",
    "clean_env",
    "free_port",
    "port_open",
    "stop_all",
    "tail",
]

HOST = "127.0.0.1"


class ServiceError(RuntimeError):
    """A throwaway service could not be started or did not become ready."""


class NotReadyError(ServiceError, TimeoutError):
    """A service still running that did not pass its readiness check in time."""


# Test runs in parallel (pytest-xdist sets PYTEST_XDIST_WORKER=gw0, gw1 ...) take
# ports from one block per worker, below the kernel's ephemeral range (32768+),
# so that no other worker, and no client socket, can be handed a port between
# the moment it is picked and the moment its service binds it. A block's ports
# plus Redis Cluster's bus offset (+10000) stay below 32768 too.
_BLOCK_START, _BLOCK_SIZE, _BLOCKS = 10000, 2500, 4


def _worker_block() -> range | None:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = worker[2:] if worker.startswith("gw") else ""
    if not index.isdigit() or int(index) >= _BLOCKS:
        return None
    start = _BLOCK_START + int(index) * _BLOCK_SIZE
    return range(start, start + _BLOCK_SIZE)


_block = _worker_block()
_next_in_block = int.from_bytes(os.urandom(2), "big") % _BLOCK_SIZE
_block_lock = threading.Lock()


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (in a parallel test run,
    one of this worker's own block, handed out in turn: reused as late as possible)."""
    global _next_in_block
    if _block is not None:
        with _block_lock:
            for _ in range(_BLOCK_SIZE):
                port = _block[_next_in_block]
                _next_in_block = (_next_in_block + 1) % _BLOCK_SIZE
                if _bindable(port):
                    return port
        raise ServiceError(f"no free port in {_block}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = HOST, timeout: float = 0.2) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def tail(path: Path, limit: int = 4000) -> str:
    """The last ``limit`` characters of a text file ("" when unreadable)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-limit:]


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without ``PG*`` variables, in the C locale."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env.pop("LANG", None)
    if extra:
        env.update(extra)
    return env


# Every live service, so that an interpreter exit never leaves one behind.
_LIVE: set[Service] = set()
_LIVE_LOCK = threading.Lock()


def stop_all() -> None:
    """Stop every service this process started and has not stopped yet."""
    with _LIVE_LOCK:
        live = list(_LIVE)
    for svc in live:
        with contextlib.suppress(Exception):
            svc.thaw()
        with contextlib.suppress(Exception):
            svc.stop()


atexit.register(stop_all)


class Service:
    """Common process handling: one child process, one temp dir, one log."""

    name = "service"

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.tmpdir: Path | None = None
        self._log_fh: Any = None

    def _make_tmpdir(self) -> Path:
        if self.tmpdir is None:
            self.tmpdir = Path(tempfile.mkdtemp(prefix=f"gw-{self.name}-"))
        return self.tmpdir

    @property
    def log_path(self) -> Path:
        return self._make_tmpdir() / f"{self.name}.log"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def diagnostics(self) -> str:
        """What a start failure shows: the tail of the service's log."""
        return tail(self.log_path)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _spawn(self, argv: Sequence[str], **kw: Any) -> None:
        self._close_log()
        self._log_fh = open(self.log_path, "ab")  # closed in _close_log
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=self._log_fh,
            stderr=subprocess.STDOUT,
            # Own session: a terminal Ctrl-C reaches only our parent, which then
            # stops us in order.
            start_new_session=True,
            **kw,
        )
        with _LIVE_LOCK:
            _LIVE.add(self)

    def await_ready(
        self,
        ready: Callable[[], bool],
        timeout: float,
        *,
        interval: float = 0.02,
        errors: tuple[type[Exception], ...] = (OSError,),
    ) -> None:
        """Poll ``ready()`` until true; fail fast when our process exits.

        ``errors`` raised by ``ready()`` count as "not yet"; the last one is
        named in the :class:`NotReadyError` raised after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while True:
            if not self.running:
                rc = self.proc.returncode if self.proc is not None else None
                raise ServiceError(f"{self.name} exited ({rc}); log:\n{self.diagnostics()}")
            try:
                if ready():
                    return
            except errors as exc:
                last = exc
            if time.monotonic() >= deadline:
                raise NotReadyError(
                    f"{self!r} not ready after {timeout}s (last error: {last!r}); "
                    f"log:\n{self.diagnostics()}"
                )
            time.sleep(interval)  # an outside process: nothing to await but its answer

    def _close_log(self) -> None:
        if self._log_fh is not None:
            with contextlib.suppress(OSError):
                self._log_fh.close()
            self._log_fh = None

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)

    def _reap(self, sig: int, timeout: float) -> int | None:
        """Send ``sig`` to our PID, wait, SIGKILL if it lingers."""
        if self.proc is None:
            return None
        proc = self.proc
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)  # a frozen process cannot exit
                os.kill(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        self._close_log()
        return proc.returncode

    def freeze(self) -> None:
        """SIGSTOP the process: it keeps its sockets but answers nothing."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT after :meth:`freeze`."""
        self._signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: a crash. The temp dir stays, so ``restart()`` works."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._close_log()

    def _cleanup(self) -> None:
        with _LIVE_LOCK:
            _LIVE.discard(self)
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def start(self) -> Any:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
