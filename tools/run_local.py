"""``make run``: the gateway with config/gateway.yaml, plus throwaway services.

If REDIS_URL / DATABASE_URL are unset, starts a local Redis / PostgreSQL on
127.0.0.1 (schema applied, merchant ``demo-merchant`` for
``demo.myshopify.com`` seeded).  Ctrl-C or SIGTERM stops the gateway and every
service started here, by PID.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import yaml  # noqa: E402

from tools.services import PostgresServer, RedisServer, ServiceError  # noqa: E402

CONFIG = Path(os.environ.get("GATEWAY_CONFIG") or REPO_ROOT / "config" / "gateway.yaml")
SCHEMA = REPO_ROOT / "config" / "schema.sql"
DEMO_MERCHANT = "demo-merchant"
DEMO_SHOP = "demo.myshopify.com"

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(value: Any) -> Any:
    if isinstance(value, str):
        return _VAR.sub(lambda m: os.environ.get(m.group(1)) or (m.group(2) or ""), value)
    return value


def read_server_settings(path: Path) -> dict[str, Any]:
    """server.port / server.path / server.demo from the YAML (defaults if absent)."""
    settings: dict[str, Any] = {"port": 8080, "path": "/api/realtime/events", "demo": False}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        print(f"run: {path} not found", file=sys.stderr)
        sys.exit(2)
    server = data.get("server") or {}
    for key in settings:
        if key in server:
            settings[key] = _expand(server[key])
    try:
        settings["port"] = int(settings["port"])
    except (TypeError, ValueError):
        print(f"run: server.port in {path} is not a number", file=sys.stderr)
        sys.exit(2)
    return settings


def redact(url: str) -> str:
    """The URL without its password."""
    try:
        u = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if u.password is None:
        return url
    user = u.username or ""
    host = u.hostname or ""
    port = f":{u.port}" if u.port else ""
    return urllib.parse.urlunsplit(u._replace(netloc=f"{user}:***@{host}{port}"))


def redis_cli_command(redis_url: str) -> str:
    u = urllib.parse.urlsplit(redis_url)
    parts = ["redis-cli"]
    if u.scheme == "unix":
        parts += ["-s", u.path]
    else:
        if u.hostname and u.hostname not in ("127.0.0.1", "localhost"):
            parts += ["-h", u.hostname]
        parts += ["-p", str(u.port or 6379)]
        if u.scheme == "rediss":
            parts.append("--tls")
    if u.password:
        parts += ["-a", "'<password>'"]
    db = u.path.lstrip("/") if u.scheme != "unix" else ""
    if db and db != "0":
        parts += ["-n", db]
    return " ".join(parts)


def wait_live(proc: subprocess.Popen[bytes], port: int, stop: threading.Event,
              timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}/health/live"
    while time.monotonic() < deadline and not stop.is_set():
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        stop.wait(0.1)
    return False


def stop_gateway(proc: subprocess.Popen[bytes], timeout: float = 15) -> int | None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"run: gateway pid {proc.pid} did not exit, killing it", file=sys.stderr)
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return proc.returncode


def main() -> int:
    t0 = time.monotonic()
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        received.append(signum)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    settings = read_server_settings(CONFIG)
    port = settings["port"]
    services: list[RedisServer | PostgresServer] = []
    gateway: subprocess.Popen[bytes] | None = None
    env = dict(os.environ)
    rc = 0
    try:
        if not env.get("REDIS_URL"):
            print("run: starting a local Redis ...", flush=True)
            redis = RedisServer()
            services.append(redis)
            redis.start()
            env["REDIS_URL"] = redis.url
        else:
            print(f"run: using REDIS_URL={redact(env['REDIS_URL'])}")

        if not env.get("DATABASE_URL"):
            print("run: starting a local PostgreSQL ...", flush=True)
            pg = PostgresServer()
            services.append(pg)
            pg.start()
            pg.apply_schema(SCHEMA)
            pg.add_merchant(DEMO_MERCHANT, DEMO_SHOP)
            env["DATABASE_URL"] = pg.dsn
            print(f"run: seeded merchant {DEMO_MERCHANT} for {DEMO_SHOP}")
        else:
            print(f"run: using DATABASE_URL={redact(env['DATABASE_URL'])} (not seeded)")

        if stop.is_set():
            return 130
        env.setdefault("PYTHONUNBUFFERED", "1")
        gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--config", str(CONFIG)],
            cwd=str(REPO_ROOT),
            env=env,
            stdin=subprocess.DEVNULL,
            # own session: Ctrl-C reaches us, and we stop the gateway with SIGTERM
            start_new_session=True,
        )
        if not wait_live(gateway, port, stop):
            if stop.is_set():
                return 130
            print(
                f"run: gateway did not answer http://127.0.0.1:{port}/health/live "
                f"(exit code {gateway.poll()})",
                file=sys.stderr,
            )
            return 1

        base = f"http://127.0.0.1:{port}"
        stream = f"{base}{settings['path']}?shop={DEMO_SHOP}"
        payload = """'{"jobId":"job-1","percent":42}'"""
        demo_note = "" if settings["demo"] else "   (needs server.demo: true in the config)"
        print(
            "\n"
            f"Gateway is up (pid {gateway.pid}) in {time.monotonic() - t0:.1f}s.\n\n"
            f"  Open the stream:\n    curl -N '{stream}'\n\n"
            f"  Publish an event:\n    {redis_cli_command(env['REDIS_URL'])} "
            f"PUBLISH merchant:{DEMO_MERCHANT}:progress {payload}\n\n"
            f"  Demo page:\n    {base}/demo/{demo_note}\n\n"
            f"  Health: {base}/health   Metrics: {base}/metrics\n\n"
            "Press Ctrl-C to stop the gateway and the services started for it.\n",
            flush=True,
        )
        while not stop.is_set():
            if gateway.poll() is not None:
                print(f"run: gateway exited with {gateway.returncode}", file=sys.stderr)
                rc = gateway.returncode or 1
                break
            stop.wait(0.5)
    except ServiceError as e:
        print(f"run: {e}", file=sys.stderr)
        rc = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if gateway is not None and gateway.poll() is None:
            print("\nrun: stopping the gateway ...", flush=True)
            stop_gateway(gateway)
        for svc in reversed(services):
            print(f"run: stopping {svc.name} (pid {svc.pid}) ...", flush=True)
            with contextlib.suppress(Exception):
                svc.stop()
        print("run: stopped.", flush=True)
    return 130 if received and rc == 0 and received[0] == signal.SIGINT else rc


if __name__ == "__main__":
    sys.exit(main())
