"""Unit tests of gateway.config.load_config: defaults, ${VAR}, validation, Redis URLs."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from config_support import BASE_ENV, DSN, PUBLISH_KEY, REPO_ROOT, config_error, load, write

from gateway.config import load_config
from gateway.config.model import Config
from gateway.errors import ConfigError


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


def test_shipped_config_file_names_every_key() -> None:
    """Each key of the config, under its section, as a key or a commented-out one
    (redis.channel, whose default depends on redis.cluster)."""
    text = (REPO_ROOT / "config" / "gateway.yaml").read_text()
    sections = re.split(r"^(?=\w+:)", text, flags=re.MULTILINE)
    named = {m[1]: set(re.findall(r"^ +(?:# )?(\w+):", body, re.MULTILINE))
             for body in sections if (m := re.match(r"(\w+):", body))}
    missing = [f"{section.name}.{key.name}" for section in dataclasses.fields(Config)
               if not section.metadata.get("internal")
               for key in dataclasses.fields(section.default_factory())  # type: ignore[misc]
               if key.name not in named.get(section.name, set())]
    assert missing == [], missing


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


# -- job state: sse.snapshot, sse.snapshot_jobs, redis.idempotency_ttl -----------------


def test_job_state_keys_default_as_readme_says(tmp_path: Path) -> None:
    cfg = load(tmp_path, {})
    assert (cfg.sse.snapshot, cfg.sse.snapshot_jobs, cfg.redis.idempotency_ttl) == (True, 100, 600)


@pytest.mark.parametrize(("snapshot", "jobs", "ttl"), [(False, 1, 1), (True, 10000, 86400)])
def test_job_state_keys_take_values_within_their_bounds(
    tmp_path: Path, snapshot: bool, jobs: int, ttl: int
) -> None:
    data = {"sse": {"snapshot": snapshot, "snapshot_jobs": jobs}, "redis": {"idempotency_ttl": ttl}}
    cfg = load(tmp_path, data)
    assert (cfg.sse.snapshot, cfg.sse.snapshot_jobs, cfg.redis.idempotency_ttl) == (
        snapshot, jobs, ttl)


def test_job_state_keys_take_expanded_variables(tmp_path: Path) -> None:
    data = {"sse": {"snapshot": "${SNAP:-true}", "snapshot_jobs": "${JOBS:-100}"},
            "redis": {"idempotency_ttl": "${IDEM:-600}"}}
    cfg = load(tmp_path, data, {"SNAP": "false", "JOBS": "7", "IDEM": "30"})
    assert (cfg.sse.snapshot, cfg.sse.snapshot_jobs, cfg.redis.idempotency_ttl) == (False, 7, 30)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"sse": {"snapshot": "yes"}}, "sse.snapshot"),
        ({"sse": {"snapshot": 1}}, "sse.snapshot"),
        ({"sse": {"snapshot": None}}, "sse.snapshot"),
        ({"sse": {"snapshot_jobs": 0}}, "sse.snapshot_jobs"),
        ({"sse": {"snapshot_jobs": 10001}}, "sse.snapshot_jobs"),
        ({"sse": {"snapshot_jobs": 2.5}}, "sse.snapshot_jobs"),
        ({"sse": {"snapshot_jobs": "100"}}, "sse.snapshot_jobs"),
        ({"sse": {"snapshot_jobs": True}}, "sse.snapshot_jobs"),
        ({"redis": {"idempotency_ttl": 0}}, "redis.idempotency_ttl"),
        ({"redis": {"idempotency_ttl": -600}}, "redis.idempotency_ttl"),
        ({"redis": {"idempotency_ttl": 0.5}}, "redis.idempotency_ttl"),
        ({"redis": {"idempotency_ttl": "600"}}, "redis.idempotency_ttl"),
        ({"redis": {"idempotency_ttl": [600]}}, "redis.idempotency_ttl"),
    ],
)
def test_a_bad_job_state_key_names_the_dotted_key(tmp_path: Path, data: Any, key: str) -> None:
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
    from gateway.redaction import redact_url

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


@pytest.mark.parametrize(("data", "key"), [
    ({"server": {"shutdown_timeout": float("nan")}}, "server.shutdown_timeout"),
    ({"postgres": {"query_timeout": float("nan")}}, "postgres.query_timeout"),
    ({"sse": {"heartbeat": float("inf")}}, "sse.heartbeat"),
    ({"server": {"path": "/metrics"}}, "server.path"),
    ({"server": {"path": "/health"}}, "server.path"),
    ({"server": {"path": "/api/{x:[}"}}, "server.path"),
    ({"postgres": {"merchant_query": "SELECT id FROM merchants WHERE shop_domain = %(shop)s "
                   "AND shop_domain LIKE '%.myshopify.com'"}}, "postgres.merchant_query"),
])
def test_values_that_would_fail_only_at_run_time_exit_2(
    tmp_path: Path, data: dict[str, Any], key: str
) -> None:
    """NaN passes every range check (`.nan` in YAML); a stream path over /metrics or
    /health hides them; a stray % fails every merchant lookup. Each used to start."""
    assert config_error(tmp_path, data).key == key


@pytest.mark.parametrize("dsn", [
    "postgresql://gw:{pw}@127.0.0.1:5432/app".format(pw="FA%ZZKE"),  # a bare % in it
    "postgresql://gw:{pw}@127.0.0.1:99999/app".format(pw="FAKE"),
])
def test_a_dsn_libpq_cannot_use_exits_2_without_quoting_it(tmp_path: Path, dsn: str) -> None:
    """It used to start, and every lookup logged psycopg2's "invalid dsn" error, which
    quotes the password, at ERROR, for as long as the gateway ran."""
    err = config_error(tmp_path, {}, {"DATABASE_URL": dsn})
    assert err.key == "postgres.dsn"
    assert "FA" not in str(err)


@pytest.mark.parametrize("event", ["connected", "resync", "snapshot", "shutdown", "revoked"])
def test_an_event_may_not_take_a_gateway_frames_name(tmp_path: Path, event: str) -> None:
    err = config_error(tmp_path, {"redis": {"events": ["progress", event]}})
    assert err.key == "redis.events[1]"


def test_password_with_a_slash_never_reaches_the_error(tmp_path: Path) -> None:
    err = config_error(tmp_path, {}, {"REDIS_URL": "redis://:s3cr/et@localhost:6379/0"})
    assert err.key == "redis.url"
    assert "s3cr" not in str(err)


# -- bytes that are not UTF-8 ---------------------------------------------------------


def test_a_yaml_escape_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    err = config_error(tmp_path, 'auth:\n  publish_key: "k\\udcffey"\n')
    assert (err.key, str(err)) == ("auth.publish_key", "auth.publish_key: must be UTF-8 text")
    err = config_error(tmp_path, 'cors:\n  allow_origins: ["https://a.test", "\\udcff"]\n')
    assert err.key == "cors.allow_origins[1]"


# -- sse.coalesce (from test_stream_queue.py) ------------------------------------------


@pytest.mark.parametrize("event", ["completion", "error"])
def test_config_refuses_to_coalesce_completion_or_error(tmp_path: Path, event: str) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(f"sse:\n  coalesce: [progress, {event}]\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path), environ={})
    assert info.value.key == "sse.coalesce[1]"

