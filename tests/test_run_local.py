"""`make run` (python -m tools.run_local): PORT, the demo page, a port in use, Ctrl-C.

run_local is pointed at the session's Redis and PostgreSQL (REDIS_URL /
DATABASE_URL), so it starts only the gateway.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import ISOLATED_ENV, http_status, wait_until

from tools.local_port import port_problem, served_by_tree
from tools.services import PostgresServer, RedisServer, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
RUN_LOCAL = [sys.executable, "-m", "tools.run_local"]  # as `make run` runs it


def _child_env() -> dict[str, str]:
    """This environment without the developer's services; the repo importable."""
    env = {k: v for k, v in os.environ.items() if k not in ISOLATED_ENV}
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def _env(redis: RedisServer, postgres: PostgresServer, port: int) -> dict[str, str]:
    env = _child_env()
    env.update(REDIS_URL=redis.url, DATABASE_URL=postgres.dsn, PORT=str(port))
    return env


@contextlib.contextmanager
def _run_local(env: dict[str, str], tmp_path: Path,
               group: bool = False) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """`make run` as a child (its output in tmp_path/run.log), killed if a test leaves
    it running; ``group``: in a process group of its own, as a terminal's foreground."""
    out = tmp_path / "run.log"
    with open(out, "wb") as fh:
        proc = subprocess.Popen(RUN_LOCAL, env=env, cwd=str(tmp_path), stdin=subprocess.DEVNULL,
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=group)
    try:
        yield proc, out
    finally:
        if proc.poll() is None:
            if group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
            proc.wait(5)


def _output_once(out: Path, proc: subprocess.Popen[bytes], text: str, timeout: float,
                 interval: float = 0.1) -> str:
    """run_local's output once it says ``text``; exiting first fails at once (pytest.fail:
    the poller would take an AssertionError for "not yet"), taking over ``timeout`` too."""

    def said() -> bool:
        if text in out.read_text():
            return True
        if proc.poll() is not None:
            pytest.fail(f"run_local exited ({proc.returncode}) before {text!r}:\n"
                        f"{out.read_text()}")
        return False

    try:
        wait_until(said, timeout, interval, f"for {text!r} from run_local")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; its output:\n{out.read_text()}") from None
    return out.read_text()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def _impostor(port: int) -> Iterator[None]:
    """Another HTTP server on the port that answers 200 to everything."""

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", port), Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_port_in_use_fails_at_once_with_a_clear_line(
    redis_server: RedisServer, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    port = free_port()
    with _impostor(port):
        assert http_status(f"http://127.0.0.1:{port}/health/live", timeout=1) == 200
        result = subprocess.run(
            RUN_LOCAL,
            env=_env(redis_server, postgres_server, port),
            cwd=str(tmp_path),
            capture_output=True,
            text=True,
            timeout=20,
        )
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"port {port} is not free" in result.stderr
    assert "Gateway is up" not in result.stdout


def test_serves_demo_on_port_and_stops_everything_on_ctrl_c(
    redis_server: RedisServer, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    port = free_port()
    with _run_local(_env(redis_server, postgres_server, port), tmp_path) as (proc, out):
        text = _output_once(out, proc, "Gateway is up", 15)
        assert "Gateway is up" in text, text
        assert http_status(f"http://127.0.0.1:{port}/demo/", timeout=1) == 200
        # its own DATABASE_URL: not seeded, so no demo shop is advertised (it would 403)
        assert "was not seeded" in text and "demo.myshopify.com" not in text
        assert "NOT READY" not in text
        pid = int(text.split("Gateway is up (pid ", 1)[1].split(")", 1)[0])
        assert served_by_tree(port, pid) is True
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 130, out.read_text()
    assert not _alive(pid)
    assert port_problem("127.0.0.1", port) is None  # the listener is gone too


def test_bad_config_or_port_stops_before_anything_starts(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  port: 70000\n")
    env = _child_env()
    cases = (({"GATEWAY_CONFIG": str(bad)}, "config error: server.port"), ({"PORT": "x"}, "PORT"))
    for extra, message in cases:
        result = subprocess.run(
            RUN_LOCAL,
            env={**env, **extra},
            cwd=str(tmp_path),
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert result.returncode == 2, result.stderr
        assert message in result.stderr
        assert "starting" not in result.stdout  # no service was started


def test_health_check_answered_by_another_process_is_not_success() -> None:
    """The defect: a gateway that could not listen, and another server's 200 taken for it."""
    from tools.run_local import wait_live

    port = free_port()
    stop = threading.Event()
    with _impostor(port):
        exited = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
        exited.wait(10)
        assert "exited with code 3" in (wait_live(exited, "0.0.0.0", port, stop, 5) or "")
        hung = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            problem = wait_live(hung, "0.0.0.0", port, stop, 5)
        finally:
            hung.kill()
            hung.wait(5)
        assert problem is not None and "another process" in problem


def test_served_by_tree_tells_our_listener_from_another() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert port_problem("127.0.0.1", port) is not None
        assert served_by_tree(port, os.getpid()) is True
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            assert served_by_tree(port, other.pid) is False
        finally:
            other.kill()
            other.wait(5)


if sys.platform != "linux":  # served_by_tree reads /proc
    pytestmark = pytest.mark.skip(reason="Linux only")


def test_cluster_switch_turns_redis_cluster_on(tmp_path: Path) -> None:
    """`make run CLUSTER=1`: the shipped config, with redis.cluster on (so `make run`
    starts a local Redis Cluster) and the cluster's hash-tagged default channel."""
    from tools.run_config import load_run_settings, run_config

    shipped = Path(__file__).resolve().parent.parent / "config" / "gateway.yaml"
    plain = load_run_settings(shipped, {})
    assert not plain.cluster and "{{" not in plain.channel
    cluster = load_run_settings(shipped, {"CLUSTER": "1"})
    assert cluster.cluster
    assert cluster.channel.format(merchant_id="m1", event="progress") == "merchant:{m1}:progress"
    assert run_config(cluster.raw, 8080)["redis"]["cluster"] is True


def test_banner_says_not_ready_when_redis_does_not_answer(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """A wrong REDIS_URL: the gateway is live, but the banner must not call it ready."""
    port, nothing = free_port(), free_port()
    env = _child_env()
    env.update(REDIS_URL=f"redis://127.0.0.1:{nothing}/0", DATABASE_URL=postgres_server.dsn,
               PORT=str(port), MAKE_RUN_STARTED=str(time.time() - 30))
    with _run_local(env, tmp_path) as (proc, out):
        text = _output_once(out, proc, "Press Ctrl-C", 30)
        assert "but NOT READY: /health answers 503" in text and "redis" in text, text
        assert "since `make run` began, installs included" in text, text
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 130, out.read_text()


def test_ctrl_c_while_services_start_stops_quietly(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the whole foreground group) while PostgreSQL starts: one line,
    exit 130 within seconds, every service stopped; no "initdb failed" dump."""
    env = _child_env()
    env["PORT"] = str(free_port())
    with _run_local(env, tmp_path, group=True) as (proc, out):  # its group plays the terminal's
        text = _output_once(out, proc, "starting a local PostgreSQL", 20, 0.02)
        assert "starting a local PostgreSQL" in text, text
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=15) == 130, out.read_text()
        assert time.monotonic() - t0 < 10
    text = out.read_text()
    assert "interrupted while starting" in text and "initdb failed" not in text, text
    assert "Traceback" not in text and "Gateway is up" not in text, text
    assert text.count("\n") < 10, text
