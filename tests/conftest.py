"""Fixtures: throwaway Redis/PostgreSQL/nginx and gateway processes.

Session scope: ``redis_server``, ``postgres_server`` (schema applied).
Function scope: ``redis_factory``, ``postgres_factory``, ``gateway_factory``,
``nginx_factory``, ``merchant``.  Everything binds 127.0.0.1 on free ports and
is stopped by PID at teardown.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import ISOLATED_ENV, unique_merchant

from tools.gateway import GatewayServer, child_env
from tools.services import NginxServer, PostgresServer, RedisServer, free_port


def deep_merge(base: dict[str, Any], over: dict[str, Any] | None) -> dict[str, Any]:
    """A copy of ``base`` with ``over`` merged in recursively (dicts only)."""
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# ----------------------------------------------------------------------------
# Redis / PostgreSQL
# ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One Redis shared by the whole session. Do not kill or freeze it."""
    with RedisServer() as r:
        yield r


@pytest.fixture
def redis_factory() -> Iterator[Callable[..., RedisServer]]:
    """``make(port=None, password=None, extra_args=(), start=True) -> RedisServer``.

    Fresh servers for fault tests (kill/freeze/restart); stopped at teardown.
    """
    made: list[RedisServer] = []

    def make(
        port: int | None = None,
        password: str | None = None,
        extra_args: tuple[str, ...] | list[str] = (),
        start: bool = True,
    ) -> RedisServer:
        r = RedisServer(port=port, password=password, extra_args=extra_args)
        made.append(r)
        if start:
            r.start()
        return r

    yield make
    for r in reversed(made):
        r.thaw()
        r.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL (database ``gateway``, schema applied) for the session.

    Shared: use fresh shops (``merchant`` fixture / ``unique_merchant()``).
    """
    with PostgresServer() as p:
        p.apply_schema()
        yield p


@pytest.fixture
def postgres_factory() -> Iterator[Callable[..., PostgresServer]]:
    """``make(schema=True, start=True) -> PostgresServer``; stopped at teardown."""
    made: list[PostgresServer] = []

    def make(schema: bool = True, start: bool = True) -> PostgresServer:
        p = PostgresServer()
        made.append(p)
        if start:
            p.start()
            if schema:
                p.apply_schema()
        return p

    yield make
    for p in reversed(made):
        p.stop()


@pytest.fixture
def merchant(postgres_server: PostgresServer) -> tuple[str, str]:
    """A fresh active merchant in the session PostgreSQL: (merchant_id, shop)."""
    mid, shop = unique_merchant()
    postgres_server.add_merchant(mid, shop)
    return mid, shop


# ----------------------------------------------------------------------------
# gateway
# ----------------------------------------------------------------------------


def _url_of(service: Any) -> str:
    if isinstance(service, str):
        return service
    if isinstance(service, RedisServer):
        return service.url
    if isinstance(service, PostgresServer):
        return service.dsn
    raise TypeError(f"expected a server or URL string, got {service!r}")


class GatewayFactory:
    """Callable fixture object: ``gateway_factory(...)`` == ``.start(...)``."""

    def __init__(self, request: pytest.FixtureRequest, tmp_path: Path) -> None:
        self._request = request
        self._tmp = tmp_path
        self.started: list[GatewayServer] = []

    def base_config(self) -> dict[str, Any]:
        return {
            "server": {"host": "127.0.0.1", "port": free_port()},
            "sse": {"heartbeat": 15},
            "logging": {"level": "INFO"},
        }

    def start(
        self,
        config: dict[str, Any] | None = None,
        env: dict[str, str | None] | None = None,
        redis: RedisServer | str | None = None,
        postgres: PostgresServer | str | None = None,
        wait: bool = True,
        timeout: float = 30,
    ) -> GatewayServer:
        """Start a gateway.

        ``config`` is deep-merged over the base config (127.0.0.1, a free
        port, heartbeat 15, INFO logs).  ``REDIS_URL``/``DATABASE_URL`` come
        from ``redis``/``postgres`` (server objects or URL strings), else the
        session servers, unless ``env`` sets them (a ``None`` value in ``env``
        removes a variable).  ``wait=False`` returns right after spawning.
        """
        n = len(self.started) + 1
        merged = deep_merge(self.base_config(), config)
        cfg_path = self._tmp / f"gateway-{n}.yaml"
        log_path = self._tmp / f"gateway-{n}.log"

        child = child_env(dict.fromkeys(ISOLATED_ENV))
        env = dict(env or {})
        if "REDIS_URL" not in env:
            child["REDIS_URL"] = _url_of(
                redis if redis is not None else self._request.getfixturevalue("redis_server")
            )
        if "DATABASE_URL" not in env:
            child["DATABASE_URL"] = _url_of(
                postgres
                if postgres is not None
                else self._request.getfixturevalue("postgres_server")
            )
        for k, v in env.items():
            if v is None:
                child.pop(k, None)
            else:
                child[k] = str(v)

        gw = GatewayServer(merged, child, config_path=cfg_path, log_path=log_path)
        self.started.append(gw)
        gw.spawn()
        if wait:
            gw.wait_ready(timeout)
        return gw

    __call__ = start

    async def astart(self, *args: Any, **kwargs: Any) -> GatewayServer:
        """``start`` in a thread, for async tests that keep other I/O going."""
        return await asyncio.to_thread(self.start, *args, **kwargs)

    def stop_all(self) -> None:
        for gw in reversed(self.started):
            gw.stop()
            print(f"---- {gw!r} log ({gw.log_path}) ----")
            print(gw.log_text()[-6000:])


@pytest.fixture
def gateway_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[GatewayFactory]:
    """``gateway_factory.start(config=None, env=None, redis=None, postgres=None,
    wait=True) -> GatewayServer`` (also callable directly)."""
    factory = GatewayFactory(request, tmp_path)
    yield factory
    factory.stop_all()


# ----------------------------------------------------------------------------
# nginx
# ----------------------------------------------------------------------------


@pytest.fixture
def nginx_factory() -> Iterator[Callable[..., NginxServer]]:
    """``make(conf_text, port=None, start=True) -> NginxServer``.

    ``conf_text`` is a complete nginx.conf (see ``tools.services.nginx_main_conf``
    for a wrapper that sets prefix-relative logs and temp paths); ``@PREFIX@``
    is replaced by the server's prefix dir.  Stopped at teardown.
    """
    made: list[NginxServer] = []

    def make(conf_text: str, port: int | None = None, start: bool = True) -> NginxServer:
        n = NginxServer(conf_text, port=port)
        made.append(n)
        if start:
            n.start()
        return n

    yield make
    for n in reversed(made):
        print(f"---- nginx error log ({n.prefix}) ----")
        print(n.error_log_text()[-4000:])
        n.stop()
