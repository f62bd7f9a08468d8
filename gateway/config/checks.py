"""Cross-key checks and the Redis source precedence, applied after every key parsed.

`load_config` calls `resolve_redis` (REDIS_URL env > redis.url > legacy
REDIS_HOST/... > the built-in default) and then `validate`; both raise
`ConfigError` naming the dotted key.
"""

from __future__ import annotations

import inspect
import ipaddress
import os
import re
import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import psycopg2
import psycopg2.extensions
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.connection import parse_url as parse_redis_url

from ..errors import ConfigError
from ..redaction import redact_url

if TYPE_CHECKING:
    from .model import Config, RedisConfig

__all__ = [
    "CLUSTER_CHANNEL",
    "DEFAULT_REDIS_URL",
    "REDIS_NEEDS",
    "legacy_redis_url",
    "resolve_redis",
    "validate",
]

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
CLUSTER_CHANNEL = "merchant:{{{merchant_id}}}:{event}"  # -> merchant:{m1}:progress
_SHOP_FIELD = "%(shop)s"
_TLS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_ca_path")
_GATEWAY_PATHS = {"/health", "/health/ready", "/health/live", "/metrics", "/demo"}
_RESERVED_EVENTS = {"connected", "resync", "shutdown", "revoked", "snapshot"}  # gateway frames
# what the gateway needs of the Redis server's own settings (check-config prints it)
REDIS_NEEDS = (
    "client-output-buffer-limit pubsub with hard and soft limits of 8mb or more "
    "(0 = none; Redis's default 32mb 8mb 60 is fine): the gateway holds its own "
    "subscriber's backlog under 4 MiB",
    "CLIENT LIST allowed to the gateway's user, to measure that backlog "
    "(else publishing waits for delivery round trips instead)",
)


def _check_hash_tag(channel: str) -> None:
    """In a cluster a merchant's channels and history must share one slot: the hash tag."""
    probe = "\x00"
    try:
        formatted = channel.format(merchant_id=probe, event="e")
    except (KeyError, IndexError, ValueError):
        return  # reported by validate() with its own message
    first = formatted.find("{")
    if first < 0 or not formatted.startswith("{" + probe + "}", first):
        raise ConfigError(
            "redis.channel",
            "with redis.cluster the merchant id must be the hash tag, e.g. "
            "merchant:{{{merchant_id}}}:{event}",
        )


def legacy_redis_url(environ: Mapping[str, str]) -> str | None:
    host = environ.get("REDIS_HOST")
    if not host:
        return None
    port = environ.get("REDIS_PORT") or "6379"
    db = environ.get("REDIS_DB") or "0"
    if not port.isdigit():
        raise ConfigError("REDIS_PORT", "must be a port number")
    if not db.isdigit():
        raise ConfigError("REDIS_DB", "must be a database number")
    password = environ.get("REDIS_PASSWORD")
    try:
        auth = f":{quote(password, safe='')}@" if password else ""
    except UnicodeEncodeError:  # bytes that are not UTF-8 arrive as lone surrogates
        raise ConfigError("REDIS_PASSWORD", "must be UTF-8 text") from None
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    return f"redis://{auth}{host}:{port}/{db}"


def resolve_redis(cfg: RedisConfig, environ: Mapping[str, str]) -> tuple[str, str]:
    if environ.get("REDIS_URL"):
        url, source = environ["REDIS_URL"], "REDIS_URL"
    elif cfg.url:
        url, source = cfg.url, "redis.url"
    elif legacy := legacy_redis_url(environ):
        url, source = legacy, "REDIS_HOST/REDIS_PORT/REDIS_PASSWORD/REDIS_DB"
    else:
        url, source = DEFAULT_REDIS_URL, "built-in default"
    key = "REDIS_HOST" if source.startswith("REDIS_HOST") else "redis.url"
    try:
        scheme = urlsplit(url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(key, f"scheme must be redis, rediss or unix: {redact_url(url)}")
        options = parse_redis_url(url)  # the parser the client will use: host, port, db
        path = urlsplit(url).path
    except ValueError:
        # the parser's message may quote part of the URL, password included
        raise ConfigError(key, "not a valid Redis URL (check host, port and db)") from None
    if scheme == "unix" and not options.get("path"):
        raise ConfigError(key, "a unix:// URL needs the socket's path")
    if scheme != "unix":
        if not options.get("host"):  # redis-py would connect to localhost, password and all
            raise ConfigError(key, "no host (an unset ${VAR}, or a '#' or '/' in the password: "
                              "percent-encode it)")
        if not re.fullmatch(r"/?|/[0-9]+", path) and "db" not in options:
            raise ConfigError(key, "the path must be the database number, e.g. /0")
    _check_options(key, options, _accepted_options(scheme, cfg.cluster))
    _check_tls_files(key, options)
    return url, source


def _accepted_options(scheme: str, cluster: bool) -> frozenset[str] | None:
    """The keyword arguments the client built from a URL takes (None: any): the cluster
    client's, or the connection class's (each class hands the rest to its parent)."""
    if cluster:
        classes: type = RedisCluster
    else:
        classes = {"unix": UnixDomainSocketConnection, "rediss": SSLConnection}.get(
            scheme, Connection)
    accepted: set[str] = set()
    for cls in classes.__mro__:
        if "__init__" not in vars(cls):
            continue
        params = inspect.signature(vars(cls)["__init__"]).parameters.values()
        accepted.update(p.name for p in params if p.name != "self" and (
            p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD))
        if all(p.kind is not p.VAR_KEYWORD for p in params):
            return frozenset(accepted)
    return None


# what the gateway sets itself, which a URL option would override (redis-py lets the
# URL win): the pool's size and wait (gate.py counts on them), RESP2 for the reader
_GATEWAY_SET = frozenset({"max_connections", "timeout", "protocol"})


def _check_options(key: str, options: Mapping[str, Any], accepted: frozenset[str] | None) -> None:
    """A query option the gateway sets itself, or one the client would refuse (a
    TypeError at every connect): named."""
    if fixed := sorted(_GATEWAY_SET.intersection(options)):
        raise ConfigError(key, f"{fixed[0]} is set by the gateway, not by a URL option")
    if accepted is not None and (unknown := sorted(set(options) - accepted - {"connection_class"})):
        raise ConfigError(key, f"unknown option {unknown[0]!r} for this Redis client")


def _check_tls_files(key: str, options: Mapping[str, Any]) -> None:
    """Load the URL's TLS files as redis-py will, so a bad one stops the start (exit 2).

    Only readable is not enough: a garbage CA file would let the gateway start and
    retry Redis forever. Errors name the option and the path, never ssl_password.
    """
    paths = {o: v for o in _TLS_FILES if isinstance(v := options.get(o), str) and v}
    ca_path = paths.pop("ssl_ca_path", None)
    if ca_path is not None and not (os.path.isdir(ca_path) and os.access(ca_path, os.R_OK)):
        raise ConfigError(key, f"ssl_ca_path: {ca_path} is not a readable directory")
    for option, path in paths.items():
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(key, f"{option}: cannot read {path}: {exc.strerror}") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for option in ("ssl_ca_certs", "ssl_certfile"):
        if option in paths:
            try:  # the certfile too: its certificate must parse before it can pair with a key
                ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(paths[option])
            except ssl.SSLError:
                message = f"{option}: {paths[option]} holds no PEM certificate"
                raise ConfigError(key, message) from None
    cert, keyfile = paths.get("ssl_certfile"), paths.get("ssl_keyfile")
    if keyfile is not None and cert is None:
        raise ConfigError(key, "ssl_keyfile: needs ssl_certfile")
    if cert is not None:
        password = options.get("ssl_password")
        try:  # a callable, so an encrypted key without ssl_password never prompts on a tty
            context.load_cert_chain(cert, keyfile, password=lambda: str(password or "").encode())
        except ssl.SSLError:
            option = "ssl_keyfile" if keyfile else "ssl_certfile"
            raise ConfigError(
                key, f"{option}: {keyfile or cert} holds no PEM private key for {cert} "
                "(or it is encrypted and ssl_password does not open it)"
            ) from None


def validate(cfg: Config, *, needs_postgres: bool = True) -> None:
    server = cfg.server
    if not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", server.path):
        raise ConfigError("server.path", "must be /-separated segments of A-Z a-z 0-9 . _ ~ -, "
                          "starting with '/' and not ending with '/'")
    if server.path in _GATEWAY_PATHS or server.path.startswith("/demo/"):
        raise ConfigError("server.path", f"{server.path} is one of the gateway's own endpoints")
    for i, proxy in enumerate(server.trusted_proxies):
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise ConfigError(
                f"server.trusted_proxies[{i}]", f"not an IP or CIDR: {proxy!r}"
            ) from None
    if "{merchant_id}" not in cfg.redis.channel or "{event}" not in cfg.redis.channel:
        raise ConfigError("redis.channel", "must contain {merchant_id} and {event}")
    try:
        cfg.redis.channel.format(merchant_id="m", event="e")
    except (KeyError, IndexError, ValueError):
        raise ConfigError(
            "redis.channel", "only {merchant_id} and {event} may appear in braces"
        ) from None
    if cfg.redis.cluster:
        _check_hash_tag(cfg.redis.channel)
    if not cfg.redis.events:
        raise ConfigError("redis.events", "must name at least one event")
    for i, event in enumerate(cfg.redis.events):
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", event) or event in _RESERVED_EVENTS:
            raise ConfigError(f"redis.events[{i}]", f"invalid or reserved event name {event!r}")
    for i, event in enumerate(cfg.sse.coalesce):
        if event not in cfg.redis.events or event in ("completion", "error"):
            raise ConfigError(f"sse.coalesce[{i}]", f"{event!r} cannot be coalesced")
    if not cfg.postgres.dsn and needs_postgres:
        raise ConfigError("postgres.dsn", "required (set DATABASE_URL or postgres.dsn)")
    if cfg.postgres.dsn:
        _check_dsn(cfg.postgres.dsn)
    if _SHOP_FIELD not in cfg.postgres.merchant_query:
        raise ConfigError("postgres.merchant_query", f"must use {_SHOP_FIELD}")
    try:  # the driver fills it the same way: a stray % (LIKE '%x') fails every lookup
        cfg.postgres.merchant_query % {"shop": "shop"}
    except (ValueError, TypeError, KeyError):
        raise ConfigError("postgres.merchant_query", f"only {_SHOP_FIELD} may follow a '%' "
                          "(write a literal % as %%)") from None
    if cfg.postgres.pool_min > cfg.postgres.pool_max:
        raise ConfigError("postgres.pool_min", "must not exceed postgres.pool_max")
    for i, origin in enumerate(cfg.cors.allow_origins):
        if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
            raise ConfigError(f"cors.allow_origins[{i}]", f"not an origin: {origin!r}")


def _check_dsn(dsn: str) -> None:
    """As libpq reads it, else a config error that never quotes it (it holds a password)."""
    if urlsplit(dsn).scheme not in ("postgresql", "postgres"):
        raise ConfigError("postgres.dsn", "must be a postgresql:// URL")
    encode = ("percent-encode reserved characters in the user and password: % as %25, "
              "@ as %40, ? as %3F")
    try:
        parsed = psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.ProgrammingError:
        raise ConfigError("postgres.dsn", f"not a valid URL ({encode})") from None
    if "@" in parsed.get("host", ""):  # libpq splits at the first '@': the password is cut
        raise ConfigError("postgres.dsn", f"the host holds an '@' ({encode})")
    port = parsed.get("port")
    for one in (port or "").split(","):  # libpq takes a list of hosts and ports
        if one and not (one.isdigit() and 1 <= int(one) <= 65535):
            raise ConfigError("postgres.dsn", "port must be from 1 to 65535")
