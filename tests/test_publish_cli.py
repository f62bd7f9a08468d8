"""gateway/durable/cli.py in-process: arguments, DATA parsing, exit codes, redaction."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from support import ISOLATED_ENV, unique_merchant

from gateway.config import Config, load_config
from gateway.durable.cli import run_publish
from gateway.durable.ids import DurableId, history_keys
from tools.services import RedisServer, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent


def config(redis_url: str) -> Config:
    return load_config(
        None, {"REDIS_URL": redis_url, "DATABASE_URL": "postgresql://gw@127.0.0.1:1/gateway"}
    )


@pytest.mark.parametrize(
    ("data", "payload"),
    [
        ('{"jobId": "po-42", "percent": 40}', b'{"jobId":"po-42","percent":40}'),
        ('"quoted text"', b"quoted text"),
        ("plain text, not JSON", b"plain text, not JSON"),
        ("42", b"42"),
        ("NaN", b"NaN"),
        ("", b""),
    ],
)
def test_publishes_and_prints_the_id(
    redis_server: RedisServer, capsys: pytest.CaptureFixture[str], data: str, payload: bytes
) -> None:
    mid, _ = unique_merchant("cli")
    assert run_publish(config(redis_server.url), mid, "stage", data) == 0
    out = capsys.readouterr()
    printed = DurableId.parse(out.out.strip())
    assert printed is not None and printed.offset == 1 and out.err == ""
    client = redis.Redis.from_url(redis_server.url)
    try:
        entries = client.xrange(history_keys(mid)[0])
    finally:
        client.close()
    assert entries == [(b"0-1", {b"e": b"stage", b"d": payload})]


@pytest.mark.parametrize(("mid", "event"), [("m 1", "progress"), ("", "stage"), ("m1", "resync")])
def test_bad_arguments_exit_2(
    redis_server: RedisServer, capsys: pytest.CaptureFixture[str], mid: str, event: str
) -> None:
    assert run_publish(config(redis_server.url), mid, event, "{}") == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.count("\n") == 1


def test_redis_down_exit_1_without_the_password(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"redis://:hunter2secret@127.0.0.1:{free_port()}/0"
    assert run_publish(config(url), "m1", "progress", "{}") == 1
    out = capsys.readouterr()
    assert out.out == "" and out.err.count("\n") == 1
    assert "hunter2secret" not in out.err and "***" in out.err


def test_the_cli_needs_no_database_url(redis_server: RedisServer) -> None:
    """`python -m gateway publish` with only REDIS_URL set: a publisher host has no
    PostgreSQL; the server itself still requires it (exit 2 naming it)."""
    env = {k: v for k, v in os.environ.items() if k not in ISOLATED_ENV}
    env.update(REDIS_URL=redis_server.url, PYTHONPATH=str(REPO_ROOT))
    mid, _ = unique_merchant("cli")
    published = subprocess.run(
        [sys.executable, "-m", "gateway", "publish", mid, "stage", '{"n": 1}'],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert published.returncode == 0, published.stderr
    assert DurableId.parse(published.stdout.strip()) is not None, published.stdout
    checked = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert checked.returncode == 2 and "postgres" in checked.stderr.lower(), checked.stderr


def test_an_interrupted_publish_does_not_exit_0() -> None:
    """Exit 0 means published (the id printed). A publish stopped by SIGTERM while
    Redis has not answered published nothing anyone knows of: it must not exit 0,
    as it did when the server's start-up handler was installed for every command."""
    import signal
    import socket

    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        port = silent.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k not in ISOLATED_ENV}
        env.update(REDIS_URL=f"redis://127.0.0.1:{port}/0", PYTHONPATH=str(REPO_ROOT))
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "publish", "m-int", "stage", "x"],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            silent.settimeout(20)
            conn, _ = silent.accept()  # the publish is under way, waiting on "Redis"
            with conn:
                proc.send_signal(signal.SIGTERM)
                out, _ = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode != 0 and out == b"", (proc.returncode, out)
