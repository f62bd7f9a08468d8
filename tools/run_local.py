"""``make run``: the gateway with config/gateway.yaml, plus throwaway services.

If REDIS_URL / DATABASE_URL are unset, starts a local Redis (a 3+3 Redis
Cluster when the config says ``redis.cluster: true``) / PostgreSQL on
127.0.0.1 (schema applied, merchant ``demo-merchant`` for
``demo.myshopify.com`` seeded).  The gateway listens on ``PORT`` (default: the
config's ``server.port``, 8080) with the demo page on; a port already in use
stops this script with exit code 1 before anything starts, and it reports the
gateway up only when its own child answers.  Ctrl-C or SIGTERM stops the
gateway and every service started here, by PID.

Run from the repo root as ``python -m tools.run_local`` (what ``make run`` does).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from gateway.redaction import redact_url
from tools.edge import start_tls_edge
from tools.gateway import GatewayServer
from tools.local_port import port_problem, probe_host, served_by_tree
from tools.run_banner import DEMO_MERCHANT, DEMO_SHOP, elapsed_text, not_ready, usage
from tools.run_config import RunSettings, fail, load_run_settings, run_config
from tools.services import PostgresServer, RedisServer, ServiceError

REPO_ROOT = Path(__file__).resolve().parent.parent

CONFIG = Path(os.environ.get("GATEWAY_CONFIG") or REPO_ROOT / "config" / "gateway.yaml")
SCHEMA = REPO_ROOT / "config" / "schema.sql"


class _Service(Protocol):
    name: str

    @property
    def pid(self) -> Any: ...

    def stop(self) -> None: ...


class _Startable(_Service, Protocol):
    def start(self) -> Any: ...


_S = TypeVar("_S", bound=_Startable)


def wait_live(proc: subprocess.Popen[bytes], host: str, port: int, stop: threading.Event,
              timeout: float = 60) -> str | None:
    """None once OUR gateway answers /health/live; else why not.

    An answer counts only while the child is alive and, where /proc can tell,
    the socket listening on the port belongs to it or its workers.
    """
    deadline = time.monotonic() + timeout
    url = f"http://{_url_host(host)}:{port}/health/live"
    while time.monotonic() < deadline and not stop.is_set():
        if proc.poll() is not None:
            return f"the gateway exited with code {proc.returncode} (its log line above says why)"
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                answered = r.status == 200
        except (urllib.error.URLError, OSError):
            answered = False
        if answered:
            if proc.poll() is not None:
                return f"the gateway exited with code {proc.returncode}"
            if served_by_tree(port, proc.pid) is False:
                return f"port {port} is answered by another process, not the gateway started here"
            return None
        stop.wait(0.1)
    return "stopped" if stop.is_set() else f"no answer from {url} within {timeout:.0f}s"


def _url_host(host: str) -> str:
    probe = probe_host(host)
    return f"[{probe}]" if ":" in probe else probe


def follow(path: Path, done: threading.Event) -> threading.Thread:
    """Copy the gateway's log to our stdout as it grows, until `done` and EOF."""

    def run() -> None:
        with open(path, "rb") as log:
            while True:
                line = log.readline()
                if line:
                    sys.stdout.buffer.write(line)
                    sys.stdout.flush()
                elif done.is_set():
                    return
                else:
                    time.sleep(0.1)

    thread = threading.Thread(target=run, name="gateway-log", daemon=True)
    thread.start()
    return thread


def stop_gateway(gateway: GatewayServer, timeout: float) -> None:
    """SIGTERM by PID, SIGKILL if it outlives `timeout`; then any worker it left behind."""
    pid = gateway.pid
    rc = gateway.stop(timeout)
    if rc == -signal.SIGKILL and pid is not None:
        print(f"run: gateway pid {pid} did not exit in {timeout:.0f}s; killed", file=sys.stderr)
        # its own session: the group is the gateway's workers, and nothing else
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def check_port(host: str, port: int) -> None:
    """Exit 1 with one clear line if the gateway could not listen on host:port."""
    problem = port_problem(host, port)
    if problem is not None:
        fail(
            f"port {port} is not free ({problem}); stop what holds it "
            f"or pick another port: PORT={port + 1 if port < 65535 else 8081} make run",
            code=1,
        )


class Interrupted(Exception):
    """Ctrl-C or SIGTERM arrived while the services were starting."""


def _check(stop: threading.Event) -> None:
    if stop.is_set():
        raise Interrupted


def start_services(env: dict[str, str], services: list[_Service], cluster: bool,
                   stop: threading.Event) -> bool:
    """Throwaway Redis / PostgreSQL for whichever of REDIS_URL / DATABASE_URL is unset.

    With ``redis.cluster: true`` the Redis is a local 3+3 cluster. True if the
    PostgreSQL is ours (schema applied, demo merchant seeded).
    """
    if env.get("REDIS_URL"):
        print(f"run: using REDIS_URL={redact_url(env['REDIS_URL'])}")
    elif cluster:
        from tools.cluster import RedisCluster

        print("run: starting a local Redis Cluster (3 primaries + 3 replicas) ...", flush=True)
        env["REDIS_URL"] = _start(RedisCluster(), services, stop).url
    else:
        print("run: starting a local Redis ...", flush=True)
        env["REDIS_URL"] = _start(RedisServer(), services, stop).url
    if env.get("DATABASE_URL"):
        print(f"run: using DATABASE_URL={redact_url(env['DATABASE_URL'])} (not seeded)")
        return False
    print("run: starting a local PostgreSQL ...", flush=True)
    pg = _start(PostgresServer(), services, stop)
    pg.apply_schema(SCHEMA)
    pg.add_merchant(DEMO_MERCHANT, DEMO_SHOP)
    env["DATABASE_URL"] = pg.dsn
    print(f"run: seeded merchant {DEMO_MERCHANT} for {DEMO_SHOP}")
    return True


def _start(service: _S, services: list[_Service], stop: threading.Event) -> _S:
    """Start ``service`` (listed first, so that it is stopped whatever happens)."""
    services.append(service)
    service.start()
    _check(stop)
    return service


@dataclass
class _Started:
    """What main() stops at the end: the gateway first, then the services, newest first."""

    services: list[_Service] = field(default_factory=list)
    gateway: GatewayServer | None = None
    log_thread: threading.Thread | None = None
    log_done: threading.Event = field(default_factory=threading.Event)


def main() -> int:
    t0 = time.monotonic()
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        received.append(signum)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    settings = load_run_settings(CONFIG, os.environ)
    check_port(settings.host, settings.port)  # before anything starts: nothing to clean up
    started = _Started()
    rc = 0
    try:
        rc = _run(settings, started, stop, t0)
    except Interrupted:
        print("\nrun: interrupted while starting", file=sys.stderr, flush=True)
    except ServiceError as e:
        if stop.is_set():  # a service that a Ctrl-C cut short: no traceback of it
            print("\nrun: interrupted while starting", file=sys.stderr, flush=True)
        else:
            print(f"run: {e}", file=sys.stderr)
            rc = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _stop_all(started, settings.shutdown_timeout + 5)
    return 130 if received and rc == 0 and received[0] == signal.SIGINT else rc


def _run(settings: RunSettings, started: _Started, stop: threading.Event, t0: float) -> int:
    """Services, then the gateway, the banner, the TLS edge if asked; its exit code."""
    host, port = settings.host, settings.port
    env = dict(os.environ)
    seeded = start_services(env, started.services, settings.cluster, stop)
    if stop.is_set():
        raise Interrupted
    check_port(host, port)  # again: the services took a moment
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.pop("GATEWAY_CONFIG", None)  # --config names the run's copy
    # own session (Ctrl-C reaches only us; we stop it by PID), log to a file we follow
    gateway = started.gateway = GatewayServer(run_config(settings.raw, port), env, cwd=REPO_ROOT)
    gateway.spawn()
    assert gateway.proc is not None
    started.log_thread = follow(gateway.log_path, started.log_done)
    problem = wait_live(gateway.proc, host, port, stop)
    if problem is not None:
        if stop.is_set():
            raise Interrupted
        print(f"run: the gateway did not start: {problem}", file=sys.stderr)
        return 1
    base = f"http://{_url_host(host)}:{port}"
    elapsed = elapsed_text(time.monotonic() - t0, os.environ, time.time())
    problem = not_ready(base)
    print(usage(gateway.proc.pid, base, settings, env, seeded, elapsed, problem), flush=True)
    if os.environ.get("TLS") == "1":  # make run TLS=1: the shipped TLS + HTTP/2 edge
        edge = start_tls_edge(port)
        started.services.append(edge)
        print(
            f"run: HTTPS + HTTP/2 edge (config/nginx-tls.conf, self-signed certificate):\n"
            f"  {edge.https_url}/demo/  and  curl -k -N "
            f"'{edge.https_url}{settings.path}?shop=demo.myshopify.com'",
            flush=True,
        )
    while not stop.is_set():
        if (code := gateway.returncode) is not None:
            print(f"run: gateway exited with {code}", file=sys.stderr)
            return code or 1
        stop.wait(0.5)
    return 0


def _stop_all(started: _Started, gateway_timeout: float) -> None:
    """Stop the gateway (by PID), then every service, newest first."""
    gateway = started.gateway
    if gateway is not None:
        if gateway.running:
            print("\nrun: stopping the gateway ...", flush=True)
        stop_gateway(gateway, gateway_timeout)
        started.log_done.set()
        if started.log_thread is not None:
            started.log_thread.join(5)
    for svc in reversed(started.services):
        name, pid = getattr(svc, "name", "service"), getattr(svc, "pid", "?")
        print(f"run: stopping {name} (pid {pid}) ...", flush=True)
        with contextlib.suppress(Exception):
            svc.stop()
    print("run: stopped.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
