"""Configs that used to pass the check and then failed, leaked or went elsewhere at run
time: each is now a ConfigError naming the key (exit 2), never quoting a secret."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from config_support import DSN, config_error, load, run_cli, write

from gateway.config import load_config
from gateway.durable.cli import run_publish
from gateway.redaction import redact_text, redact_url
from tools.services import free_port

PW = "Hunter2Redis"


def test_ssl_password_is_masked_like_any_password() -> None:
    url = f"rediss://:{PW}@h:6380/0?ssl_keyfile=/k.pem&ssl_password=KeyPassPw"
    assert "KeyPassPw" not in redact_url(url) and PW not in redact_url(url)
    assert "KeyPassPw" not in redact_text(f"connecting to {url}")


@pytest.mark.parametrize("url", [
    f"redis://:{PW}@:6379/0",  # an unset ${REDIS_HOST}
    f"rediss://:{PW}@/0",
    "redis://:12#ab@prod.example.com/0",  # '#' not encoded: host gone, port 12
    "unix://",
])
def test_a_redis_url_without_a_host_is_refused(tmp_path: Path, url: str) -> None:
    """redis-py connects to localhost when the host is empty, and sends the password there."""
    err = config_error(tmp_path, {"redis": {"url": url}})
    assert err.key == "redis.url"
    assert PW not in str(err) and "12#ab" not in str(err)


def test_a_redis_url_path_that_is_no_database_number_is_refused(tmp_path: Path) -> None:
    err = config_error(tmp_path, {"redis": {"url": "redis://h:6379/notadb"}})
    assert err.key == "redis.url" and "database" in str(err)
    assert load(tmp_path, {"redis": {"url": "redis://h:6379/"}}).redis.url == "redis://h:6379/"


@pytest.mark.parametrize(("url", "cluster", "option"), [
    ("rediss://h:6380/0?ssl_ca_cert=/ca.pem", False, "ssl_ca_cert"),  # ssl_ca_certs misspelt
    ("redis://h:6379/0?ssl_password=x", True, "ssl_password"),
    ("redis://h:6379/0?ssl_certfile=/c.pem", False, "ssl_certfile"),  # TLS options need rediss
])
def test_an_option_the_redis_client_would_refuse_is_named(
    tmp_path: Path, url: str, cluster: bool, option: str
) -> None:
    """Each used to pass: then every connect failed with a TypeError, or the cluster
    client's constructor raised at start with a traceback."""
    data = {"redis": {"url": url, "cluster": cluster,
                      **({"channel": "merchant:{{merchant_id}}:{event}"} if cluster else {})}}
    err = config_error(tmp_path, data)
    assert err.key == "redis.url" and option in str(err)


@pytest.mark.parametrize("option", ["max_connections=1", "timeout=0", "protocol=3"])
def test_an_option_the_gateway_sets_itself_is_refused(tmp_path: Path, option: str) -> None:
    """redis-py lets a URL option win over the client's own arguments: the pool's size
    and wait, and RESP2 for the subscriber's reader, would be changed behind its back."""
    err = config_error(tmp_path, {"redis": {"url": f"redis://h:6379/0?{option}"}})
    assert err.key == "redis.url" and option.split("=")[0] in str(err)


def test_options_the_client_takes_pass(tmp_path: Path) -> None:
    url = "rediss://h:6380/0?ssl_cert_reqs=none&ssl_check_hostname=false&socket_keepalive=true"
    assert load(tmp_path, {"redis": {"url": url}}).redis.url == url


def test_a_dsn_whose_password_holds_an_unencoded_at_is_refused(tmp_path: Path) -> None:
    """libpq splits at the first '@': it would log in with half the password to a host
    named after the other half, every lookup failing."""
    err = config_error(tmp_path, {}, {"DATABASE_URL": "postgresql://gw:PgSec@retD@127.0.0.1/gw"})
    assert err.key == "postgres.dsn" and "%40" in str(err)
    assert "PgSec" not in str(err) and "retD" not in str(err)


@pytest.mark.parametrize("text", [
    "auth:\n  api_key: 2024-02-30\n",  # a date YAML cannot build
    "server:\n  port: " + "9" * 5000 + "\n",  # past Python's int parsing limit
])
def test_a_yaml_value_yaml_cannot_build_exits_2(tmp_path: Path, text: str) -> None:
    result = run_cli(["check-config", "--config", write(tmp_path, text)], {"DATABASE_URL": DSN})
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "2024" not in result.stderr


def test_an_expanded_value_yaml_cannot_build_names_the_key(tmp_path: Path) -> None:
    for value in ("[" * 5000, "9" * 5000):
        err = config_error(tmp_path, {"server": {"port": "${HB}"}}, {"HB": value})
        assert err.key == "server.port"


def test_publish_to_an_unreachable_cluster_exits_1_without_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = load_config(None, {"REDIS_URL": f"redis://:{PW}@127.0.0.1:{free_port()}/0",
                             "DATABASE_URL": DSN})
    cfg = dataclasses.replace(cfg, redis=dataclasses.replace(
        cfg.redis, cluster=True, channel="merchant:{{merchant_id}}:{event}"))
    assert run_publish(cfg, "m1", "progress", "{}") == 1
    out = capsys.readouterr()
    assert out.err.count("\n") == 1 and PW not in out.err
