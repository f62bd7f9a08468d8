"""Throwaway local services for the test suite, ``make run`` and the benchmark.

Plain subprocess management: every process is started here, bound to
127.0.0.1 only, and stopped by its own PID.  Temporary directories are removed
on ``stop()``.  Nothing here mocks anything.

One module per service: :class:`RedisServer` (``redis_server``),
:class:`PostgresServer` (``postgres``), :class:`NginxServer` (``nginx``),
:class:`PrometheusServer` (``prometheus``); :func:`self_signed_cert`
(``certs``). All share :class:`~tools.services.base.Service` and its one
readiness wait, and are context managers (``with RedisServer() as r: ...``).
"""

from .base import (
    HOST,
    NotReadyError,
    Service,
    ServiceError,
    free_port,
    port_open,
    stop_all,
)
from .certs import self_signed_cert
from .nginx import NginxServer, nginx_main_conf
from .postgres import PostgresServer
from .prometheus import PrometheusServer
from .redis_server import RedisServer

__all__ = [
    "HOST",
    "NginxServer",
    "NotReadyError",
    "PostgresServer",
    "PrometheusServer",
    "RedisServer",
    "Service",
    "ServiceError",
    "free_port",
    "nginx_main_conf",
    "port_open",
    "self_signed_cert",
    "stop_all",
]
