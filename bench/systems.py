"""The systems under test: start on loopback, expose what the client needs, stop by PID.

The base class and every peer of the gateway; the gateway itself is in
``bench/gateway_system.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import IO

from bench.nchan import NCHAN_MODULE, render_conf
from tools.services import NginxServer, RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
STREAM_PATH = "/api/realtime/events?shop=m{i}.myshopify.com"  # the gateway's, and its peers'


def wait_http(port: int, path: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    end = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before {path} answered")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
                if r.status == 200:
                    return
        except Exception as e:
            last = e
        time.sleep(0.1)
    raise RuntimeError(f"127.0.0.1:{port}{path} not live after {timeout}s: {last}")


def stop_pid_tree(proc: subprocess.Popen, pids: list[int], timeout: float) -> None:
    """SIGTERM the root, wait, then SIGKILL whatever of ``pids`` is left (by PID only)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    for pid in pids:
        if pid == proc.pid:
            continue
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


DURABLE_KINDS = {"-durable": "durable", "-durable-http": "durable-http"}


def parse_system(name: str) -> tuple[str, int]:
    """``gateway2`` -> (``gateway``, 2); ``nchan-memory`` -> (``nchan-memory``, 1).

    ``gatewayW-durable`` is the gateway fed by durable publishes (``publish.lua``
    run by the Python helper) instead of plain PUBLISH, ``gatewayW-durable-http``
    by the same events through its HTTP publish API (arrays, one per tick): the
    same trial, so they compare with plain in one run.
    """
    m = re.fullmatch(r"(gateway|nchan-memory|nchan-redis|naive)(\d*)(-durable(?:-http)?)?", name)
    if not m or (m.group(3) and m.group(1) != "gateway"):
        raise ValueError(f"unknown system {name!r}")
    return m.group(1), int(m.group(2) or 1)


def durable_split(name: str) -> tuple[str, str] | None:
    """``gateway1-durable-http`` -> (``gateway1``, ``durable-http``); None for a plain one."""
    for suffix, kind in sorted(DURABLE_KINDS.items(), key=lambda kv: -len(kv[0])):
        if name.endswith(suffix):
            return name[: -len(suffix)], kind
    return None


class System:
    """Base: subclasses set port, path_template, publish, redis, pub_port, root_pid."""

    kind = ""
    wait_frame = True
    publish = "redis"

    def __init__(self, name: str, workers: int, tmp: Path) -> None:
        self.name = name
        self.workers = workers
        self.tmp = tmp
        self.port = 0
        self.pub_port = 0
        self.path_template = ""
        self.redis: RedisServer | None = None
        self.proc: subprocess.Popen | None = None
        self.pids: list[int] = []
        self.log: IO[bytes] | None = None

    @property
    def root_pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def client_args(self) -> list[str]:
        args = ["--port", str(self.port), "--path-template", self.path_template]
        args += ["--publish", self.publish]
        if self.publish == "durable-http":
            args += ["--pub-port", str(self.port)]
        elif self.publish in ("redis", "durable"):
            assert self.redis is not None
            args += ["--redis-url", self.redis.url]
        else:
            args += ["--pub-port", str(self.pub_port)]
        if self.wait_frame:
            args.append("--wait-frame")
        return args

    def redis_pid(self) -> int | None:
        if self.redis is None:
            return None
        proc = getattr(self.redis, "proc", None) or getattr(self.redis, "process", None)
        return getattr(proc, "pid", None) or getattr(self.redis, "pid", None)

    def start(self) -> None:
        raise NotImplementedError

    def spawn_app(self, module: str, *args: str) -> None:
        """Run one of bench's aiohttp apps, ``python -m module --port P *args``, on a free
        port with the gateway's stream path; return once it answers."""
        self.port = free_port()
        self.path_template = STREAM_PATH
        log = self.log = open(self.tmp / f"{self.name}.log", "wb")
        self.proc = subprocess.Popen([PY, "-m", module, "--port", str(self.port), *args],
                                     cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        wait_http(self.port, "/health/live", 30, self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid_tree(self.proc, self.pids, 15)
            self.proc = None
        if self.log is not None:
            self.log.close()
            self.log = None
        if self.redis is not None:
            self.redis.stop()
            self.redis = None


class Naive(System):
    kind = "naive"

    def start(self) -> None:
        self.redis = RedisServer(extra_args=["--maxclients", "100000"])
        self.redis.start()
        self.spawn_app("bench.naive_app", "--redis-url", self.redis.url)


class Floor(System):
    """The framework's floor (``bench/floor_app.py``): a bare aiohttp streaming handler."""

    kind = "floor"

    def __init__(self, name: str, workers: int, tmp: Path, low_level: bool = False) -> None:
        super().__init__(name, workers, tmp)
        self.low_level = low_level

    def start(self) -> None:
        self.spawn_app("bench.floor_app", *(["--low-level"] if self.low_level else []))


class Nchan(System):
    kind = "nchan"
    publish = "nchan"
    wait_frame = True  # nchan sends ": hi" right after the headers

    def __init__(self, name: str, workers: int, tmp: Path, use_redis: bool) -> None:
        super().__init__(name, workers, tmp)
        self.use_redis = use_redis
        self.nginx: NginxServer | None = None

    def start(self) -> None:
        ensure_nchan()
        import resource

        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        redis_url = None
        if self.use_redis:
            self.redis = RedisServer()
            self.redis.start()
            redis_url = self.redis.url.rsplit("/", 1)[0]
        self.port = self.pub_port = free_port()
        self.path_template = "/sub/m{i}"
        self.nginx = NginxServer(
            render_conf(self.port, self.workers, redis_url, nofile), port=self.port
        )
        self.nginx.start()
        self.proc = getattr(self.nginx, "proc", None) or getattr(self.nginx, "process", None)
        wait_http(self.port, "/health/live", 30)

    def redis_pid(self) -> int | None:
        return super().redis_pid()

    def stop(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
            self.nginx = None
            self.proc = None
        super().stop()


def ensure_nchan() -> None:
    """Install nginx + nchan from Debian when absent (root only)."""
    if shutil.which("nginx") and os.path.exists(NCHAN_MODULE):
        return
    if os.geteuid() != 0:
        raise RuntimeError("nginx/libnginx-mod-nchan missing and not root to install them")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update"], check=False, env=env, timeout=300)
    subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", "nginx", "libnginx-mod-nchan"],
        check=True,
        env=env,
        timeout=600,
    )


def make_tmp() -> Path:
    return Path(tempfile.mkdtemp(prefix="bench-"))
