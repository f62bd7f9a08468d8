"""A throwaway ``redis-server`` on 127.0.0.1, no persistence."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
from collections.abc import Iterable

from .base import HOST, Service, ServiceError, free_port

__all__ = ["RedisServer"]


class RedisServer(Service):
    """A throwaway ``redis-server`` on 127.0.0.1, no persistence.

    ``RedisServer(port=None, password=None, extra_args=())``; ``start()``
    waits until it answers PING.  ``restart()`` comes back on the same port.
    """

    name = "redis"

    def __init__(
        self,
        port: int | None = None,
        password: str | None = None,
        extra_args: Iterable[str] = (),
    ) -> None:
        super().__init__()
        self.port = port or free_port()
        self.password = password
        self.extra_args = list(extra_args)
        self.binary = shutil.which("redis-server") or "/usr/bin/redis-server"

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{HOST}:{self.port}/0"

    @property
    def host(self) -> str:
        return HOST

    def __repr__(self) -> str:  # never shows the password
        return f"<RedisServer 127.0.0.1:{self.port} pid={self.pid}>"

    def argv(self) -> list[str]:
        tmp = self._make_tmpdir()
        argv = [
            self.binary,
            "--port", str(self.port),
            "--bind", HOST,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(tmp),
            "--daemonize", "no",
            "--protected-mode", "no",
            "--loglevel", "notice",
        ]
        if self.password:
            argv += ["--requirepass", self.password]
        return argv + self.extra_args

    def start(self, timeout: float = 10.0) -> RedisServer:
        if self.running:
            return self
        if not os.path.exists(self.binary):
            raise ServiceError("redis-server not found (run tools/bootstrap.sh)")
        self._spawn(self.argv(), cwd=str(self._make_tmpdir()))
        self.wait_ready(timeout)
        return self

    def ping(self, timeout: float = 1.0) -> bool:
        """True when the server answers PING within ``timeout`` seconds."""
        cmd = b""
        if self.password:
            pw = self.password.encode()
            cmd += b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(pw), pw)
        cmd += b"*1\r\n$4\r\nPING\r\n"
        try:
            with socket.create_connection((HOST, self.port), timeout=timeout) as s:
                s.settimeout(timeout)
                s.sendall(cmd)
                return _read_pong(s, time.monotonic() + timeout)
        except OSError:
            return False

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Until PING answers (subclasses may check over another transport)."""
        self.await_ready(lambda: self.ping(0.5), timeout)

    def stop(self) -> None:
        """SIGTERM by PID, wait, remove the temp dir."""
        self._reap(signal.SIGTERM, 10)
        self._cleanup()

    def restart(self, timeout: float = 10.0) -> RedisServer:
        """Stop (if running) and start again on the same port."""
        self._reap(signal.SIGTERM, 10)
        self.start(timeout)
        return self


def _read_pong(s: socket.socket, deadline: float) -> bool:
    buf = b""
    while b"+PONG" not in buf:
        if b"-" in buf[:1] or time.monotonic() > deadline:
            return False
        chunk = s.recv(256)
        if not chunk:
            return False
        buf += chunk
    return True
