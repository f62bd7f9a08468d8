"""Unit tests of gateway.config.load_config and the `check-config` CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import yaml

from gateway.config import load_config
from gateway.errors import ConfigError
from tests.support import ISOLATED_ENV
from tools.services import self_signed_cert

REPO_ROOT = Path(__file__).resolve().parent.parent
DSN = "postgresql://gw@127.0.0.1:5432/gateway"
BASE_ENV = {"DATABASE_URL": DSN}

REDIS_PW = "r3disS3cretPw"
PG_PW = "pgS3cretPw"
TOKEN_SECRET = "sessi0nTokenS3cret"
API_KEY = "apiK3yS3cret"
PUBLISH_KEY = "publishK3yS3cret"
SECRETS = (REDIS_PW, PG_PW, TOKEN_SECRET, API_KEY, PUBLISH_KEY)


def write(tmp_path: Path, data: Any, name: str = "gateway.yaml") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(path)


def load(tmp_path: Path, data: Any, env: dict[str, str] | None = None) -> Any:
    return load_config(write(tmp_path, data), {**BASE_ENV, **(env or {})})


def config_error(tmp_path: Path, data: Any, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, data, env)
    return info.value


# -- defaults -------------------------------------------------------------------


def test_defaults_match_the_spec(tmp_path: Path) -> None:
    cfg = load(tmp_path, {})
    s = cfg.server
    assert (s.host, s.port, s.workers, s.path) == ("0.0.0.0", 8080, 1, "/api/realtime/events")
    assert tuple(s.trusted_proxies) == ("127.0.0.1",)
    assert s.shutdown_timeout == 10
    assert s.max_new_streams_per_s == 500
    r = cfg.redis
    assert r.url == "redis://localhost:6379/0"
    assert r.channel == "merchant:{merchant_id}:{event}"
    assert tuple(r.events) == ("progress", "stage", "completion", "error")
    p = cfg.postgres
    assert p.dsn == DSN
    assert (p.pool_min, p.pool_max) == (1, 10)
    assert p.merchant_query == ("SELECT id FROM merchants WHERE shop_domain = %(shop)s AND active")
    assert (p.cache_ttl, p.negative_cache_ttl, p.recheck) == (30, 5, 60)
    e = cfg.sse
    assert (e.heartbeat, e.retry_ms, e.history, e.linger, e.max_queue) == (15, 3000, 100, 30, 1000)
    assert tuple(e.coalesce) == ("progress",)
    assert e.job_key == "jobId"
    assert (e.max_connections, e.max_connections_per_merchant) == (20000, 200)
    a = cfg.auth
    assert (a.session_token_secret, a.api_key, a.ticket_ttl) == ("", "", 3600)
    assert tuple(cfg.cors.allow_origins) == ()
    assert (cfg.logging.level, cfg.logging.format) == ("INFO", "text")


def test_empty_file_and_no_file_give_the_same_defaults(tmp_path: Path) -> None:
    assert load(tmp_path, "") == load_config(None, BASE_ENV)


def test_shipped_config_file_is_valid_and_matches_defaults() -> None:
    shipped = load_config(str(REPO_ROOT / "config" / "gateway.yaml"), BASE_ENV)
    assert shipped == load_config(None, BASE_ENV)


def test_shipped_config_takes_the_publish_key_from_gateway_publish_key() -> None:
    """README and docs/publishing.md name GATEWAY_PUBLISH_KEY: the shipped file reads it."""
    shipped = str(REPO_ROOT / "config" / "gateway.yaml")
    assert load_config(shipped, BASE_ENV).auth.publish_key == ""
    cfg = load_config(shipped, {**BASE_ENV, "GATEWAY_PUBLISH_KEY": PUBLISH_KEY})
    assert cfg.auth.publish_key == PUBLISH_KEY


def test_postgres_dsn_is_required(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, {}), {})
    assert info.value.key == "postgres.dsn"


# -- ${VAR} expansion -------------------------------------------------------------


def test_var_expansion(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        {
            "server": {"host": "${GW_HOST}", "path": "/${GW_PREFIX}/events"},
            "sse": {"job_key": "${GW_JOB_KEY:-jobId}"},
            "auth": {"api_key": "${GW_API_KEY:-fallback-key}"},
            "cors": {"allow_origins": ["https://${GW_ORIGIN_HOST}", "${GW_UNSET:-http://x.test}"]},
        },
        {
            "GW_HOST": "127.0.0.9",
            "GW_PREFIX": "rt",
            "GW_JOB_KEY": "job",
            "GW_ORIGIN_HOST": "a.test",
        },
    )
    assert cfg.server.host == "127.0.0.9"
    assert cfg.server.path == "/rt/events"
    assert cfg.sse.job_key == "job"  # set: the default is not used
    assert cfg.auth.api_key == "fallback-key"  # unset: the default is used
    assert tuple(cfg.cors.allow_origins) == ("https://a.test", "http://x.test")


def test_unset_var_without_default_expands_to_empty(tmp_path: Path) -> None:
    cfg = load(tmp_path, {"auth": {"api_key": "${GW_DEFINITELY_UNSET}"}})
    assert cfg.auth.api_key == ""


def test_redis_url_from_yaml_var(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        {"redis": {"url": "${MY_REDIS:-redis://127.0.0.1:7000/3}"}},
    )
    assert cfg.redis.url == "redis://127.0.0.1:7000/3"
    cfg = load(
        tmp_path,
        {"redis": {"url": "${MY_REDIS:-redis://127.0.0.1:7000/3}"}},
        {"MY_REDIS": "redis://10.0.0.1:6380/1"},
    )
    assert cfg.redis.url == "redis://10.0.0.1:6380/1"


# -- validation: the dotted key is named -----------------------------------------


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"bogus": 1}, "bogus"),
        ({"server": {"bogus": 1}}, "server.bogus"),
        ({"sse": {"heartbeats": 1}}, "sse.heartbeats"),
        ({"server": 5}, "server"),
        ({"server": {"port": "8080"}}, "server.port"),
        ({"server": {"port": 8080.5}}, "server.port"),
        ({"server": {"port": True}}, "server.port"),
        ({"server": {"port": 70000}}, "server.port"),
        ({"server": {"port": -1}}, "server.port"),
        ({"server": {"workers": 0}}, "server.workers"),
        ({"server": {"host": 127}}, "server.host"),
        ({"server": {"shutdown_timeout": "ten"}}, "server.shutdown_timeout"),
        ({"server": {"trusted_proxies": "127.0.0.1"}}, "server.trusted_proxies"),
        ({"server": {"trusted_proxies": ["127.0.0.1", "nope"]}}, "server.trusted_proxies[1]"),
        ({"sse": {"heartbeat": "fast"}}, "sse.heartbeat"),
        ({"sse": {"heartbeat": 0}}, "sse.heartbeat"),
        ({"sse": {"heartbeat": -5}}, "sse.heartbeat"),
        ({"sse": {"max_queue": 0}}, "sse.max_queue"),
        ({"sse": {"retry_ms": 1.5}}, "sse.retry_ms"),
        ({"sse": {"max_connections_per_merchant": 0}}, "sse.max_connections_per_merchant"),
        ({"sse": {"coalesce": ["completion"]}}, "sse.coalesce[0]"),
        ({"redis": {"events": "progress"}}, "redis.events"),
        ({"redis": {"events": ["progress", 7]}}, "redis.events"),
        ({"redis": {"events": ["progress", "bad name"]}}, "redis.events[1]"),
        ({"redis": {"events": ["progress", "connected"]}}, "redis.events[1]"),
        ({"redis": {"channel": "merchant:{event}"}}, "redis.channel"),
        ({"redis": {"url": "http://127.0.0.1:6379"}}, "redis.url"),
        ({"postgres": {"pool_max": 0}}, "postgres.pool_max"),
        ({"postgres": {"cache_ttl": -1}}, "postgres.cache_ttl"),
        ({"postgres": {"merchant_query": "SELECT id FROM merchants"}}, "postgres.merchant_query"),
        ({"auth": {"ticket_ttl": 0}}, "auth.ticket_ttl"),
        ({"auth": {"session_token_secret": 123}}, "auth.session_token_secret"),
        ({"cors": {"allow_origins": ["example.com"]}}, "cors.allow_origins[0]"),
        ({"logging": {"level": "LOUD"}}, "logging.level"),
        ({"logging": {"format": "xml"}}, "logging.format"),
    ],
)
def test_invalid_values_name_the_dotted_key(tmp_path: Path, data: Any, key: str) -> None:
    err = config_error(tmp_path, data)
    assert err.key == key
    assert str(err).startswith(f"{key}:"), str(err)


def test_invalid_yaml_is_a_config_error(tmp_path: Path) -> None:
    err = config_error(tmp_path, "server: [unclosed\n")
    assert "yaml" in str(err).lower()


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_config(str(tmp_path / "absent.yaml"), BASE_ENV)


# -- Redis source precedence --------------------------------------------------------

LEGACY = {
    "REDIS_HOST": "legacy.host",
    "REDIS_PORT": "6390",
    "REDIS_PASSWORD": "p@ss/w:rd",
    "REDIS_DB": "2",
}


def test_redis_url_env_beats_everything(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        {"redis": {"url": "redis://from-file:6379/0"}},
        {"REDIS_URL": "redis://from-env:6379/5", **LEGACY},
    )
    assert cfg.redis.url == "redis://from-env:6379/5"


def test_redis_url_key_beats_legacy_vars(tmp_path: Path) -> None:
    cfg = load(tmp_path, {"redis": {"url": "redis://from-file:6379/1"}}, LEGACY)
    assert cfg.redis.url == "redis://from-file:6379/1"


def test_legacy_vars_build_the_url(tmp_path: Path) -> None:
    cfg = load(tmp_path, {}, LEGACY)
    parts = urlsplit(cfg.redis.url)
    assert parts.scheme == "redis"
    assert parts.hostname == "legacy.host"
    assert parts.port == 6390
    assert unquote(parts.password or "") == "p@ss/w:rd"
    assert parts.path == "/2"


def test_legacy_host_alone_uses_default_port_and_db(tmp_path: Path) -> None:
    cfg = load(tmp_path, {}, {"REDIS_HOST": "h.test"})
    parts = urlsplit(cfg.redis.url)
    assert (parts.hostname, parts.port, parts.path, parts.password) == ("h.test", 6379, "/0", None)


def test_default_redis_url(tmp_path: Path) -> None:
    assert load(tmp_path, {}).redis.url == "redis://localhost:6379/0"


def test_empty_redis_url_env_falls_through(tmp_path: Path) -> None:
    cfg = load(tmp_path, {"redis": {"url": "redis://from-file:6379/1"}}, {"REDIS_URL": ""})
    assert cfg.redis.url == "redis://from-file:6379/1"


@pytest.mark.parametrize(
    "url",
    [
        "rediss://:pw@redis.example.com:6380/0",
        "rediss://user:pw@redis.example.com/1",
        "unix:///var/run/redis/redis.sock",
        "unix:///tmp/redis.sock?db=3",
        "redis://user:pass@127.0.0.1:6379/4",
    ],
)
def test_tls_and_unix_urls_are_accepted(tmp_path: Path, url: str) -> None:
    assert load(tmp_path, {}, {"REDIS_URL": url}).redis.url == url
    assert load(tmp_path, {"redis": {"url": url}}).redis.url == url


def test_database_url_overrides_postgres_dsn(tmp_path: Path) -> None:
    other = "postgresql://u:p@db.example.com:5433/other"
    cfg = load(tmp_path, {"postgres": {"dsn": "postgresql://file@h/db"}}, {"DATABASE_URL": other})
    assert cfg.postgres.dsn == other
    cfg = load_config(write(tmp_path, {"postgres": {"dsn": "postgresql://file@h/db"}}), {})
    assert cfg.postgres.dsn == "postgresql://file@h/db"


# -- the CLI --------------------------------------------------------------------------


def run_cli(
    args: list[str], env: dict[str, str], cwd: Path = REPO_ROOT
) -> subprocess.CompletedProcess[str]:
    child = {k: v for k, v in os.environ.items() if k not in ISOLATED_ENV}
    child["PYTHONPATH"] = str(REPO_ROOT)
    child.update(env)
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=str(cwd),
        env=child,
        capture_output=True,
        text=True,
        timeout=30,
    )


def secret_env() -> dict[str, str]:
    return {
        "REDIS_URL": f"redis://admin:{REDIS_PW}@127.0.0.1:6379/0",
        "DATABASE_URL": f"postgresql://gw:{PG_PW}@127.0.0.1:5432/gateway",
        "GW_TOKEN_SECRET": TOKEN_SECRET,
    }


def secret_config(tmp_path: Path) -> str:
    return write(
        tmp_path,
        {
            "server": {"port": 9123},
            "auth": {"session_token_secret": "${GW_TOKEN_SECRET}", "api_key": API_KEY},
        },
    )


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


@pytest.mark.parametrize(
    "url",
    [
        "redis://:s3cret@127.0.0.1:63x9/0",
        "redis://:s3cret@127.0.0.1:99999/0",
        "redis://:s3cret@[::1:6390/0",
    ],
)
def test_malformed_redis_url_is_a_config_error_without_the_password(
    tmp_path: Path, url: str
) -> None:
    err = config_error(tmp_path, {}, {"REDIS_URL": url})
    assert err.key == "redis.url"
    assert "s3cret" not in str(err)


def test_legacy_ipv6_host_is_bracketed(tmp_path: Path) -> None:
    cfg = load(tmp_path, {}, {"REDIS_HOST": "::1", "REDIS_PASSWORD": "pw"})
    parts = urlsplit(cfg.redis.url)
    assert (parts.hostname, parts.port, parts.password) == ("::1", 6379, "pw")


def test_unix_url_keeps_its_form_when_redacted(tmp_path: Path) -> None:
    from gateway.logs import redact_url

    assert redact_url("unix:///run/redis.sock?db=1") == "unix:///run/redis.sock?db=1"


def test_numeric_and_boolean_keys_take_expanded_variables(tmp_path: Path) -> None:
    data = {"server": {"port": "${PORT:-8080}", "demo": "${DEMO:-false}"}}
    assert load(tmp_path, data).server.port == 8080
    cfg = load(tmp_path, data, {"PORT": "9000", "DEMO": "true"})
    assert (cfg.server.port, cfg.server.demo) == (9000, True)
    assert config_error(tmp_path, data, {"PORT": "http"}).key == "server.port"


def test_a_quoted_number_without_a_variable_is_still_a_type_error(tmp_path: Path) -> None:
    assert config_error(tmp_path, {"server": {"port": "8080"}}).key == "server.port"


def test_channel_template_may_only_name_merchant_and_event(tmp_path: Path) -> None:
    err = config_error(tmp_path, {"redis": {"channel": "m:{merchant_id}:{event}:{x}"}})
    assert err.key == "redis.channel"


def test_password_with_a_slash_never_reaches_the_error(tmp_path: Path) -> None:
    err = config_error(tmp_path, {}, {"REDIS_URL": "redis://:s3cr/et@localhost:6379/0"})
    assert err.key == "redis.url"
    assert "s3cr" not in str(err)


# -- bytes that are not UTF-8 ---------------------------------------------------------


def one_line_exit_2(res: subprocess.CompletedProcess[str], *names: str) -> str:
    """The single stderr line of a refused config; it names each of ``names``."""
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


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


def test_a_yaml_escape_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    err = config_error(tmp_path, 'auth:\n  publish_key: "k\\udcffey"\n')
    assert (err.key, str(err)) == ("auth.publish_key", "auth.publish_key: must be UTF-8 text")
    err = config_error(tmp_path, 'cors:\n  allow_origins: ["https://a.test", "\\udcff"]\n')
    assert err.key == "cors.allow_origins[1]"


# -- Redis TLS files ----------------------------------------------------------------


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, Path]:
    """A real certificate and key, another key, an encrypted key, garbage; by name."""
    cert, key = self_signed_cert(tmp_path / "a")
    _, other_key = self_signed_cert(tmp_path / "b")
    encrypted = tmp_path / "encrypted.pem"
    subprocess.run(
        ["openssl", "pkey", "-in", str(key), "-aes256", "-passout", f"pass:{REDIS_PW}x",
         "-out", str(encrypted)],
        check=True, capture_output=True, timeout=30,
    )
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(bytes(range(256)) * 4)
    fake = tmp_path / "fake.pem"
    fake.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    return {"cert": cert, "key": key, "other_key": other_key, "encrypted": encrypted,
            "garbage": garbage, "fake": fake, "dir": tmp_path, "absent": tmp_path / "absent.pem"}


def tls_url(files: dict[str, Path], **query: str) -> str:
    args = "&".join(f"{k}={files.get(v, v)}" for k, v in query.items())
    return f"rediss://:{REDIS_PW}@127.0.0.1:6380/0?{args}"


def test_good_tls_files_are_accepted(tmp_path: Path, tls_files: dict[str, Path]) -> None:
    for query in (
        {"ssl_ca_certs": "cert"},
        {"ssl_ca_certs": "cert", "ssl_certfile": "cert", "ssl_keyfile": "key"},
        {"ssl_certfile": "cert", "ssl_keyfile": "encrypted", "ssl_password": f"{REDIS_PW}x"},
        {"ssl_ca_path": "dir"},
    ):
        url = tls_url(tls_files, **query)
        assert load(tmp_path, {}, {"REDIS_URL": url}).redis.url == url


@pytest.mark.parametrize(
    ("query", "option", "words"),
    [
        ({"ssl_ca_certs": "absent"}, "ssl_ca_certs", "cannot read"),
        ({"ssl_ca_certs": "dir"}, "ssl_ca_certs", "cannot read"),
        ({"ssl_ca_certs": "garbage"}, "ssl_ca_certs", "no PEM certificate"),
        ({"ssl_ca_certs": "fake"}, "ssl_ca_certs", "no PEM certificate"),
        ({"ssl_ca_certs": "key"}, "ssl_ca_certs", "no PEM certificate"),
        ({"ssl_ca_path": "absent"}, "ssl_ca_path", "not a readable directory"),
        ({"ssl_certfile": "garbage", "ssl_keyfile": "key"}, "ssl_certfile", "no PEM certificate"),
        ({"ssl_certfile": "cert", "ssl_keyfile": "absent"}, "ssl_keyfile", "cannot read"),
        ({"ssl_certfile": "cert", "ssl_keyfile": "garbage"}, "ssl_keyfile", "no PEM private key"),
        ({"ssl_certfile": "cert", "ssl_keyfile": "other_key"}, "ssl_keyfile", "no PEM private"),
        ({"ssl_certfile": "cert"}, "ssl_certfile", "no PEM private key"),
        ({"ssl_keyfile": "key"}, "ssl_keyfile", "needs ssl_certfile"),
        ({"ssl_certfile": "cert", "ssl_keyfile": "encrypted"}, "ssl_keyfile", "ssl_password"),
        ({"ssl_certfile": "cert", "ssl_keyfile": "encrypted", "ssl_password": REDIS_PW},
         "ssl_keyfile", "ssl_password"),
    ],
)
def test_bad_tls_files_are_config_errors(
    tmp_path: Path, tls_files: dict[str, Path], query: dict[str, str], option: str, words: str
) -> None:
    err = config_error(tmp_path, {}, {"REDIS_URL": tls_url(tls_files, **query)})
    assert err.key == "redis.url"
    assert str(err).startswith(f"redis.url: {option}: "), str(err)
    assert words in str(err)
    assert REDIS_PW not in str(err)


@pytest.mark.parametrize("command", [["check-config"], []])
@pytest.mark.parametrize("bad", ["garbage", "absent"])
def test_a_bad_tls_file_exits_2_in_one_line(
    tmp_path: Path, tls_files: dict[str, Path], bad: str, command: list[str]
) -> None:
    url = tls_url(tls_files, ssl_ca_certs=bad)
    env = {**secret_env(), "REDIS_URL": url}
    res = run_cli([*command, "--config", secret_config(tmp_path)], env)
    one_line_exit_2(res, "redis.url", "ssl_ca_certs", str(tls_files[bad]))
    assert REDIS_PW not in res.stderr + res.stdout
