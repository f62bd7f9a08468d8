"""The `check-config` CLI and the gateway's start: effective config, redaction, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from config_support import (
    PG_PW,
    PUBLISH_KEY,
    REDIS_PW,
    REPO_ROOT,
    SECRETS,
    one_line_exit_2,
    run_cli,
    secret_config,
    secret_env,
    write,
)
from support import ISOLATED_ENV


def test_check_config_prints_effective_config_without_secrets(tmp_path: Path) -> None:
    res = run_cli(["check-config", "--config", secret_config(tmp_path)], secret_env())
    assert res.returncode == 0, res.stderr
    out = res.stdout + res.stderr
    for secret in SECRETS:
        assert secret not in out
    printed = yaml.safe_load(res.stdout)
    assert printed["server"]["port"] == 9123
    assert printed["sse"]["heartbeat"] == 15
    redis_url = urlsplit(printed["redis"]["url"])
    assert (redis_url.hostname, redis_url.port, redis_url.username) == ("127.0.0.1", 6379, "admin")
    dsn = urlsplit(printed["postgres"]["dsn"])
    assert (dsn.hostname, dsn.port, dsn.username, dsn.path) == ("127.0.0.1", 5432, "gw", "/gateway")
    assert printed["auth"]["session_token_secret"] not in ("", None)


def test_check_config_of_the_shipped_file_masks_the_publish_key() -> None:
    """The shipped config/gateway.yaml with every secret in the environment: none printed."""
    env = {**secret_env(), "GATEWAY_PUBLISH_KEY": PUBLISH_KEY}
    res = run_cli(["check-config", "--config", str(REPO_ROOT / "config" / "gateway.yaml")], env)
    assert res.returncode == 0, res.stderr
    for secret in SECRETS:
        assert secret not in res.stdout + res.stderr
    assert yaml.safe_load(res.stdout)["auth"]["publish_key"] == "***"


def test_check_config_redacts_legacy_redis_password(tmp_path: Path) -> None:
    env = {
        "DATABASE_URL": f"postgresql://gw:{PG_PW}@127.0.0.1:5432/gateway",
        "REDIS_HOST": "127.0.0.1",
        "REDIS_PASSWORD": REDIS_PW,
    }
    res = run_cli(["check-config", "--config", write(tmp_path, {})], env)
    assert res.returncode == 0, res.stderr
    assert REDIS_PW not in res.stdout + res.stderr
    assert PG_PW not in res.stdout + res.stderr
    assert "127.0.0.1" in yaml.safe_load(res.stdout)["redis"]["url"]


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"server": {"port": 99999}}, "server.port"),
        ({"sse": {"heartbeat": "x"}}, "sse.heartbeat"),
        ({"nope": {}}, "nope"),
        ({"redis": {"events": ["progress", "a b"]}}, "redis.events[1]"),
    ],
)
@pytest.mark.parametrize("command", [["check-config"], []])
def test_bad_config_exits_2_with_one_line_naming_the_key(
    tmp_path: Path, data: Any, key: str, command: list[str]
) -> None:
    res = run_cli([*command, "--config", write(tmp_path, data)], secret_env())
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert key in lines[0]
    assert res.stdout == ""
    for secret in SECRETS:
        assert secret not in res.stderr


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"sse": {"snapshot": "off"}}, "sse.snapshot"),
        ({"sse": {"snapshot_jobs": 10001}}, "sse.snapshot_jobs"),
        ({"redis": {"idempotency_ttl": 0}}, "redis.idempotency_ttl"),
    ],
)
@pytest.mark.parametrize("command", [["check-config"], []])
def test_a_bad_job_state_key_exits_2_with_one_line_naming_it(
    tmp_path: Path, data: Any, key: str, command: list[str]
) -> None:
    res = run_cli([*command, "--config", write(tmp_path, data)], secret_env())
    one_line_exit_2(res, key)
    assert res.stdout == ""


def test_check_config_prints_the_job_state_keys(tmp_path: Path) -> None:
    res = run_cli(["check-config", "--config", write(tmp_path, {})], secret_env())
    assert res.returncode == 0, res.stderr
    printed = yaml.safe_load(res.stdout)
    assert (printed["sse"]["snapshot"], printed["sse"]["snapshot_jobs"]) == (True, 100)
    assert printed["redis"]["idempotency_ttl"] == 600


def test_bad_redis_url_error_does_not_leak_password(tmp_path: Path) -> None:
    env = {**secret_env(), "REDIS_URL": f"http://admin:{REDIS_PW}@127.0.0.1:6379/0"}
    res = run_cli(["check-config", "--config", write(tmp_path, {})], env)
    assert res.returncode == 2
    assert "redis.url" in res.stderr
    assert REDIS_PW not in res.stderr + res.stdout


def test_gateway_config_env_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, {"server": {"port": 9124}, "sse": {"heartbeat": 7}})
    env = {**secret_env(), "GATEWAY_CONFIG": path}
    res = run_cli(["check-config"], env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    printed = yaml.safe_load(res.stdout)
    assert printed["server"]["port"] == 9124
    assert printed["sse"]["heartbeat"] == 7

    bad = write(tmp_path, {"server": {"port": "x"}}, "bad.yaml")
    res = run_cli(["check-config"], {**secret_env(), "GATEWAY_CONFIG": bad}, cwd=tmp_path)
    assert res.returncode == 2
    assert "server.port" in res.stderr


def test_config_flag_wins_over_gateway_config_env(tmp_path: Path) -> None:
    env_file = write(tmp_path, {"server": {"port": 9125}}, "env.yaml")
    flag_file = write(tmp_path, {"server": {"port": 9126}}, "flag.yaml")
    res = run_cli(
        ["check-config", "--config", flag_file], {**secret_env(), "GATEWAY_CONFIG": env_file}
    )
    assert res.returncode == 0, res.stderr
    assert yaml.safe_load(res.stdout)["server"]["port"] == 9126


def test_check_config_redacts_password_in_url_query(tmp_path: Path) -> None:
    env = {
        "REDIS_URL": f"redis://127.0.0.1:6379/0?password={REDIS_PW}",
        "DATABASE_URL": f"postgresql://gw@127.0.0.1:5432/gateway?password={PG_PW}",
    }
    res = run_cli(["check-config", "--config", write(tmp_path, {})], env)
    assert res.returncode == 0, res.stderr
    assert REDIS_PW not in res.stdout + res.stderr
    assert PG_PW not in res.stdout + res.stderr


# -- bytes that are not UTF-8 ---------------------------------------------------------


@pytest.mark.parametrize("command", [["check-config"], []])
@pytest.mark.parametrize(
    "data", [b"\xff\xfe", b"\xff\xfes\x00e\x00r\x00", b"server:\n  path: /caf\xe9\n"]
)
def test_a_config_file_that_is_not_utf8_exits_2_naming_the_file(
    tmp_path: Path, data: bytes, command: list[str]
) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(data)
    res = run_cli([*command, "--config", str(path)], secret_env())
    line = one_line_exit_2(res, str(path), "UTF-8")
    assert res.stdout == ""
    assert ("line 2" in line) == data.startswith(b"server:"), line


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"GW_TOKEN_SECRET": "s\udcffcret"}, "auth.session_token_secret"),
        ({"DATABASE_URL": f"postgresql://gw:{PG_PW}\udcff@127.0.0.1/gateway"}, "postgres.dsn"),
        ({"REDIS_URL": f"redis://:{REDIS_PW}\udcff@127.0.0.1:6379/0"}, "redis.url"),
        ({"REDIS_URL": "", "REDIS_HOST": "h", "REDIS_PASSWORD": "\udcff"}, "REDIS_PASSWORD"),
    ],
)
def test_an_environment_variable_that_is_not_utf8_exits_2_naming_the_key(
    tmp_path: Path, env: dict[str, str], key: str
) -> None:
    # subprocess encodes the lone surrogate back to the raw byte 0xff
    res = run_cli(["check-config", "--config", secret_config(tmp_path)], {**secret_env(), **env})
    one_line_exit_2(res, key)
    for secret in SECRETS:
        assert secret not in res.stderr


# -- ${VAR:-default} in string keys (from test_hardening_e2e.py) -----------------------


def _check_config(cfg_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    child_env = {
        k: v for k, v in os.environ.items() if k not in (*ISOLATED_ENV, "GW_PATH", "CH", "MQ")
    }
    child_env["PYTHONPATH"] = str(REPO_ROOT)
    child_env["DATABASE_URL"] = "postgresql://gateway@127.0.0.1:1/gateway"  # never connected
    child_env["REDIS_URL"] = "redis://127.0.0.1:1/0"
    child_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "--config", str(cfg_path)],
        cwd=str(REPO_ROOT), env=child_env, capture_output=True, text=True, timeout=30,
    )


def test_check_config_expands_defaults_in_string_keys(tmp_path: Path) -> None:
    query = "SELECT id FROM merchants WHERE shop_domain = %(shop)s AND active"
    cfg_path = tmp_path / "gateway.yaml"
    cfg_path.write_text(
        "server:\n"
        "  path: ${GW_PATH:-/events}\n"
        "redis:\n"
        '  channel: "${CH:-merchant:{merchant_id}:{event}}"\n'
        "postgres:\n"
        f'  merchant_query: "${{MQ:-{query}}}"\n'
        "logging:\n"
        "  format: ${LOG_FORMAT_UNSET:-json}\n"
    )
    done = _check_config(cfg_path, {})
    assert done.returncode == 0, f"rc={done.returncode}\n{done.stderr[-2000:]}"
    printed = yaml.safe_load(done.stdout)
    assert printed["server"]["path"] == "/events"
    assert printed["redis"]["channel"] == "merchant:{merchant_id}:{event}"
    assert printed["postgres"]["merchant_query"] == query
    assert printed["logging"]["format"] == "json"

    done = _check_config(cfg_path, {"GW_PATH": "/rt/events", "CH": "m:{merchant_id}:{event}"})
    assert done.returncode == 0, f"rc={done.returncode}\n{done.stderr[-2000:]}"
    printed = yaml.safe_load(done.stdout)
    assert printed["server"]["path"] == "/rt/events"
    assert printed["redis"]["channel"] == "m:{merchant_id}:{event}"
