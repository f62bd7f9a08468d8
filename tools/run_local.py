"""``make run``: the gateway with config/gateway.yaml, plus throwaway services.

If REDIS_URL / DATABASE_URL are unset, starts a local Redis / PostgreSQL on
127.0.0.1 (schema applied, merchant ``demo-merchant`` for
``demo.myshopify.com`` seeded).  The gateway listens on ``PORT`` (default: the
config's ``server.port``, 8080) with the demo page on; a port already in use
stops this script with exit code 1 before anything starts.  Ctrl-C or SIGTERM
stops the gateway and every service started here, by PID.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, NoReturn

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import yaml  # noqa: E402

from gateway.redaction import redact_url  # noqa: E402
from tools.local_port import port_problem, probe_host, served_by_tree  # noqa: E402
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


def read_server_settings(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the raw YAML, server.host/port/path from it) with ``PORT`` from the environment.

    The port is ``PORT`` if set, else the config's ``server.port``, else 8080.
    """
    settings: dict[str, Any] = {"host": "0.0.0.0", "port": 8080, "path": "/api/realtime/events"}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")
    except yaml.YAMLError:
        fail(f"{path} is not valid YAML (python -m gateway check-config names the line)")
    if not isinstance(data, dict) or not isinstance(data.get("server") or {}, dict):
        fail(f"{path}: top level and server must be mappings")
    server = data.get("server") or {}
    for key in settings:
        if key in server:
            settings[key] = _expand(server[key])
    if os.environ.get("PORT"):
        settings["port"] = os.environ["PORT"]
    try:
        settings["port"] = int(settings["port"])
    except (TypeError, ValueError):
        fail(f"the port is not a number: {settings['port']!r} (PORT or server.port)")
    if not 1 <= settings["port"] <= 65535:
        fail(f"the port must be between 1 and 65535, got {settings['port']}")
    settings["host"] = str(settings["host"])
    return data, settings


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"run: {message}", file=sys.stderr)
    sys.exit(code)


def write_run_config(data: dict[str, Any], port: int, directory: str) -> Path:
    """The config with server.port = port and server.demo on, for this run only."""
    data = dict(data)
    data["server"] = {**(data.get("server") or {}), "port": port, "demo": True}
    path = Path(directory) / "gateway.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


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


def stop_gateway(proc: subprocess.Popen[bytes], timeout: float = 15) -> int | None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"run: gateway pid {proc.pid} did not exit, killing it", file=sys.stderr)
            # its own session (start_new_session): the group holds only it and its workers
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return proc.returncode


def check_port(host: str, port: int) -> None:
    """Exit 1 with one clear line if the gateway could not listen on host:port."""
    problem = port_problem(host, port)
    if problem is not None:
        fail(
            f"port {port} is not free ({problem}); stop what holds it "
            f"or pick another port: PORT={port + 1 if port < 65535 else 8081} make run",
            code=1,
        )


def start_services(env: dict[str, str], services: list[RedisServer | PostgresServer]) -> None:
    """Throwaway Redis / PostgreSQL for whichever of REDIS_URL / DATABASE_URL is unset."""
    if not env.get("REDIS_URL"):
        print("run: starting a local Redis ...", flush=True)
        redis = RedisServer()
        services.append(redis)
        redis.start()
        env["REDIS_URL"] = redis.url
    else:
        print(f"run: using REDIS_URL={redact_url(env['REDIS_URL'])}")
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
        print(f"run: using DATABASE_URL={redact_url(env['DATABASE_URL'])} (not seeded)")


def usage(pid: int, base: str, path: str, env: dict[str, str], seeded: bool,
          seconds: float) -> str:
    stream = f"{base}{path}?shop={DEMO_SHOP}"
    payload = """'{"jobId":"job-1","percent":42}'"""
    sql = "INSERT INTO merchants (id, shop_domain) VALUES ('m-2', 'shop2.myshopify.com')"
    merchant = f"  Add a merchant:\n    psql '{env['DATABASE_URL']}' -c \"{sql}\"\n\n"
    return (
        "\n"
        f"Gateway is up (pid {pid}) in {seconds:.1f}s.\n\n"
        f"  Demo page (progress bar for {DEMO_SHOP}):\n    {base}/demo/\n\n"
        f"  Open the stream:\n    curl -N '{stream}'\n\n"
        f"  Publish an event:\n    {redis_cli_command(env['REDIS_URL'])} "
        f"PUBLISH merchant:{DEMO_MERCHANT}:progress {payload}\n\n"
        f"{merchant if seeded else ''}"
        f"  Health: {base}/health   Metrics: {base}/metrics\n\n"
        "Press Ctrl-C to stop the gateway and the services started for it.\n"
    )


def main() -> int:
    t0 = time.monotonic()
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        received.append(signum)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    data, settings = read_server_settings(CONFIG)
    host, port = settings["host"], settings["port"]
    check_port(host, port)  # before anything starts: nothing to clean up
    services: list[RedisServer | PostgresServer] = []
    gateway: subprocess.Popen[bytes] | None = None
    env = dict(os.environ)
    rc = 0
    workdir = tempfile.mkdtemp(prefix="gateway-run-")
    try:
        start_services(env, services)
        if stop.is_set():
            return 130
        check_port(host, port)  # again: the services took a moment
        config = write_run_config(data, port, workdir)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.pop("GATEWAY_CONFIG", None)  # --config names the run's copy
        gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--config", str(config)],
            cwd=str(REPO_ROOT),
            env=env,
            stdin=subprocess.DEVNULL,
            # own session: Ctrl-C reaches us, and we stop the gateway with SIGTERM
            start_new_session=True,
        )
        problem = wait_live(gateway, host, port, stop)
        if problem is not None:
            if stop.is_set():
                return 130
            print(f"run: the gateway did not start: {problem}", file=sys.stderr)
            return 1
        base = f"http://{_url_host(host)}:{port}"
        elapsed = time.monotonic() - t0
        seeded = any(isinstance(svc, PostgresServer) for svc in services)
        print(usage(gateway.pid, base, settings["path"], env, seeded, elapsed), flush=True)
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
        shutil.rmtree(workdir, ignore_errors=True)
        print("run: stopped.", flush=True)
    return 130 if received and rc == 0 and received[0] == signal.SIGINT else rc


if __name__ == "__main__":
    sys.exit(main())
