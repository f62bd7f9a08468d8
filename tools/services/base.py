"""Throwaway local services for the test suite, ``make run`` and the benchmark.

Plain subprocess management: every process is started by this module, bound to
127.0.0.1 only, and stopped by its own PID.  Temporary directories are removed
on ``stop()``.  Nothing here mocks anything.

Classes: :class:`RedisServer`, :class:`PostgresServer`, :class:`NginxServer`,
:class:`PrometheusServer`. All are context managers (``with RedisServer() as r:
...``). :func:`self_signed_cert` makes a throwaway TLS certificate.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"

__all__ = [
    "HOST",
    "NginxServer",
    "PostgresServer",
    "PrometheusServer",
    "RedisServer",
    "ServiceError",
    "free_port",
    "nginx_main_conf",
    "port_open",
    "self_signed_cert",
    "stop_all",
]


class ServiceError(RuntimeError):
    """A throwaway service could not be started or did not become ready."""


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = HOST, timeout: float = 0.2) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-limit:]


def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env.pop("LANG", None)
    if extra:
        env.update(extra)
    return env


# Every live service, so that an interpreter exit never leaves one behind.
_LIVE: set[_Service] = set()
_LIVE_LOCK = threading.Lock()


def stop_all() -> None:
    """Stop every service this process started and has not stopped yet."""
    with _LIVE_LOCK:
        live = list(_LIVE)
    for svc in live:
        with contextlib.suppress(Exception):
            svc.thaw()
        with contextlib.suppress(Exception):
            svc.stop()


atexit.register(stop_all)


class _Service:
    """Common process handling: one child process, one temp dir, one log."""

    name = "service"

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.tmpdir: Path | None = None
        self._log_fh: Any = None

    # -- lifecycle helpers -------------------------------------------------
    def _make_tmpdir(self) -> Path:
        if self.tmpdir is None:
            self.tmpdir = Path(tempfile.mkdtemp(prefix=f"gw-{self.name}-"))
        return self.tmpdir

    @property
    def log_path(self) -> Path:
        return self._make_tmpdir() / f"{self.name}.log"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _spawn(self, argv: Sequence[str], **kw: Any) -> None:
        self._close_log()
        self._log_fh = open(self.log_path, "ab")  # closed in _close_log
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=self._log_fh,
            stderr=subprocess.STDOUT,
            # Own session: a terminal Ctrl-C reaches only our parent, which then
            # stops us in order.
            start_new_session=True,
            **kw,
        )
        with _LIVE_LOCK:
            _LIVE.add(self)

    def _close_log(self) -> None:
        if self._log_fh is not None:
            with contextlib.suppress(OSError):
                self._log_fh.close()
            self._log_fh = None

    def _signal(self, sig: int) -> None:
        if self.running:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)

    def _reap(self, sig: int, timeout: float) -> int | None:
        """Send ``sig`` to our PID, wait, SIGKILL if it lingers."""
        if self.proc is None:
            return None
        proc = self.proc
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)  # a frozen process cannot exit
                os.kill(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        self._close_log()
        return proc.returncode

    def freeze(self) -> None:
        """SIGSTOP the process: it keeps its sockets but answers nothing."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT after :meth:`freeze`."""
        self._signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: a crash. The temp dir stays, so :meth:`restart` works."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._close_log()

    def _cleanup(self) -> None:
        with _LIVE_LOCK:
            _LIVE.discard(self)
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def start(self) -> Any:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_port(self, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise ServiceError(
                    f"{self.name} exited with {self.proc and self.proc.returncode}; "
                    f"log:\n{_tail(self.log_path)}"
                )
            if port_open(port):
                return
            time.sleep(0.02)
        raise ServiceError(f"{self.name} not listening on {port} after {timeout}s")


# ----------------------------------------------------------------------------
# Redis
# ----------------------------------------------------------------------------


class RedisServer(_Service):
    """A throwaway ``redis-server`` on 127.0.0.1, no persistence.

    ``RedisServer(port=None, password=None, extra_args=())``; ``start()``
    waits until it answers PING.  ``restart()`` comes back on the same port.
    """

    name = "redis"

    def __init__(
        self,
        port: int | None = None,
        password: str | None = None,
        extra_args: Iterable[str] = (),
    ) -> None:
        super().__init__()
        self.port = port or free_port()
        self.password = password
        self.extra_args = list(extra_args)
        self.binary = shutil.which("redis-server") or "/usr/bin/redis-server"

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{HOST}:{self.port}/0"

    @property
    def host(self) -> str:
        return HOST

    def __repr__(self) -> str:  # never shows the password
        return f"<RedisServer 127.0.0.1:{self.port} pid={self.pid}>"

    def argv(self) -> list[str]:
        tmp = self._make_tmpdir()
        argv = [
            self.binary,
            "--port", str(self.port),
            "--bind", HOST,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(tmp),
            "--daemonize", "no",
            "--protected-mode", "no",
            "--loglevel", "notice",
        ]
        if self.password:
            argv += ["--requirepass", self.password]
        return argv + self.extra_args

    def start(self, timeout: float = 10.0) -> RedisServer:
        if self.running:
            return self
        if not os.path.exists(self.binary):
            raise ServiceError("redis-server not found (run tools/bootstrap.sh)")
        self._spawn(self.argv(), cwd=str(self._make_tmpdir()))
        self.wait_ready(timeout)
        return self

    def ping(self, timeout: float = 1.0) -> bool:
        """True when the server answers PING within ``timeout`` seconds."""
        try:
            with socket.create_connection((HOST, self.port), timeout=timeout) as s:
                s.settimeout(timeout)
                cmd = b""
                if self.password:
                    pw = self.password.encode()
                    cmd += b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(pw), pw)
                cmd += b"*1\r\n$4\r\nPING\r\n"
                s.sendall(cmd)
                buf = b""
                deadline = time.monotonic() + timeout
                while b"+PONG" not in buf:
                    if b"-" in buf[:1] or time.monotonic() > deadline:
                        return False
                    chunk = s.recv(256)
                    if not chunk:
                        return False
                    buf += chunk
                return True
        except OSError:
            return False

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise ServiceError(
                    f"redis-server exited ({self.proc and self.proc.returncode}); "
                    f"log:\n{_tail(self.log_path)}"
                )
            if self.ping(0.5):
                return
            time.sleep(0.02)
        raise ServiceError(f"redis-server on {self.port} not ready after {timeout}s")

    def stop(self) -> None:
        """SIGTERM by PID, wait, remove the temp dir."""
        self._reap(signal.SIGTERM, 10)
        self._cleanup()

    def restart(self, timeout: float = 10.0) -> RedisServer:
        """Stop (if running) and start again on the same port."""
        self._reap(signal.SIGTERM, 10)
        self.start(timeout)
        return self


# ----------------------------------------------------------------------------
# PostgreSQL
# ----------------------------------------------------------------------------


def pg_bindir() -> Path:
    """Directory holding ``postgres``/``initdb`` (server binaries)."""
    candidates: list[str] = []
    env = os.environ.get("PG_BINDIR")
    if env:
        candidates.append(env)
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(Exception):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10
            )
            if out.returncode == 0:
                candidates.append(out.stdout.strip())

    def version_key(p: str) -> float:
        try:
            return float(Path(p).parent.name)
        except ValueError:
            return 0.0

    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version_key, reverse=True)
    which_pg = shutil.which("postgres")
    if which_pg:
        candidates.append(str(Path(which_pg).resolve().parent))
    for c in candidates:
        if (Path(c) / "postgres").exists() and (Path(c) / "initdb").exists():
            return Path(c)
    raise ServiceError(
        "PostgreSQL server binaries not found (apt-get install postgresql; "
        "or run tools/bootstrap.sh)"
    )


_PG_USER_FALLBACK = "gatewaytest"


def _pg_os_user() -> pwd.struct_passwd | None:
    """The unprivileged account to run postgres as, or None when not root.

    PostgreSQL refuses to run as root.  As root we use the ``postgres`` account
    that Debian's ``postgresql`` package creates, or create a system account
    ``gatewaytest`` when it is missing.
    """
    if os.geteuid() != 0:
        return None
    for name in ("postgres", _PG_USER_FALLBACK):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    subprocess.run(
        [
            "useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
            "--shell", "/usr/sbin/nologin", _PG_USER_FALLBACK,
        ],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam(_PG_USER_FALLBACK)


def _chown_tree(path: Path, user: pwd.struct_passwd | None) -> None:
    if user is None:
        return
    os.chown(path, user.pw_uid, user.pw_gid)
    for root, dirs, files in os.walk(path):
        for n in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                os.lchown(os.path.join(root, n), user.pw_uid, user.pw_gid)


_TEMPLATE_LOCK = threading.Lock()
_TEMPLATE: Path | None = None


def _pg_template() -> Path:
    """An initdb'd data dir (with database ``gateway``), made once per process.

    Each :class:`PostgresServer` copies it, which is much faster than initdb.
    """
    global _TEMPLATE
    with _TEMPLATE_LOCK:
        if _TEMPLATE is not None and _TEMPLATE.exists():
            return _TEMPLATE
        bindir = pg_bindir()
        user = _pg_os_user()
        root = Path(tempfile.mkdtemp(prefix="gw-pgtemplate-"))
        os.chmod(root, 0o755)
        data = root / "data"
        _chown_tree(root, user)
        kw: dict[str, Any] = {}
        if user is not None:
            kw.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
        out = subprocess.run(
            [
                str(bindir / "initdb"), "-D", str(data), "-U", PostgresServer.USER,
                "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync",
                "--no-instructions",
            ],
            cwd=str(root), env=_clean_env(), capture_output=True, text=True,
            start_new_session=True,  # a terminal Ctrl-C reaches only our parent
            **kw,
        )
        if out.returncode != 0:
            shutil.rmtree(root, ignore_errors=True)
            raise ServiceError(f"initdb failed:\n{out.stdout}\n{out.stderr}")
        with open(data / "postgresql.conf", "a") as f:
            f.write(
                "\n# throwaway test server\n"
                "listen_addresses = '127.0.0.1'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "shared_buffers = 16MB\nmax_connections = 200\n"
                "dynamic_shared_memory_type = posix\n"
                "logging_collector = off\nlog_min_messages = warning\n"
                "max_wal_size = 256MB\ncheckpoint_timeout = 1h\n"
            )
        out = subprocess.run(
            [str(bindir / "postgres"), "--single", "-D", str(data), "-c", "fsync=off",
             "postgres"],
            input="CREATE DATABASE gateway;\n",
            cwd=str(root), env=_clean_env(), capture_output=True, text=True,
            start_new_session=True, **kw,
        )
        if out.returncode != 0:
            shutil.rmtree(root, ignore_errors=True)
            raise ServiceError(f"createdb failed:\n{out.stdout}\n{out.stderr}")
        _TEMPLATE = root
        atexit.register(shutil.rmtree, root, True)
        return root


class PostgresServer(_Service):
    """A throwaway PostgreSQL cluster on 127.0.0.1 with database ``gateway``.

    Trust auth; superuser ``gateway``; ``.dsn`` is
    ``postgresql://gateway@127.0.0.1:PORT/gateway``.
    """

    name = "postgres"
    USER = "gateway"
    DATABASE = "gateway"

    def __init__(self, port: int | None = None) -> None:
        super().__init__()
        self.port = port or free_port()
        self._os_user: pwd.struct_passwd | None = None
        self._prepared = False

    def __repr__(self) -> str:
        return f"<PostgresServer 127.0.0.1:{self.port} pid={self.pid}>"

    @property
    def host(self) -> str:
        return HOST

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.USER}@{HOST}:{self.port}/{self.DATABASE}"

    @property
    def data_dir(self) -> Path:
        return self._make_tmpdir() / "data"

    def _prepare(self) -> None:
        if self._prepared:
            return
        template = _pg_template()
        tmp = self._make_tmpdir()
        os.chmod(tmp, 0o755)
        shutil.copytree(template / "data", self.data_dir, symlinks=True)
        (tmp / "sock").mkdir(exist_ok=True)
        with open(self.data_dir / "postgresql.conf", "a") as f:
            f.write(f"port = {self.port}\nunix_socket_directories = '{tmp / 'sock'}'\n")
        self._os_user = _pg_os_user()
        _chown_tree(tmp, self._os_user)
        os.chmod(self.data_dir, 0o700)
        self._prepared = True

    def start(self, timeout: float = 30.0) -> PostgresServer:
        if self.running:
            return self
        self._prepare()
        kw: dict[str, Any] = {}
        if self._os_user is not None:
            kw.update(user=self._os_user.pw_uid, group=self._os_user.pw_gid, extra_groups=[])
        # A crashed (SIGKILLed) postmaster leaves postmaster.pid behind; postgres
        # itself detects that the PID is gone and starts anyway.
        self._spawn(
            [str(pg_bindir() / "postgres"), "-D", str(self.data_dir)],
            cwd=str(self._make_tmpdir()),
            env=_clean_env(),
            **kw,
        )
        self.wait_ready(timeout)
        return self

    def _connect(self, timeout: float = 5.0) -> Any:
        import psycopg2

        return psycopg2.connect(
            host=HOST, port=self.port, user=self.USER, dbname=self.DATABASE,
            connect_timeout=max(1, int(timeout)),
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if not self.running:
                raise ServiceError(
                    f"postgres exited ({self.proc and self.proc.returncode}); "
                    f"log:\n{_tail(self.log_path)}"
                )
            if port_open(self.port):
                try:
                    conn = self._connect(2)
                except Exception as e:  # starting up / not accepting yet
                    last = e
                else:
                    conn.close()
                    return
            time.sleep(0.03)
        raise ServiceError(f"postgres on {self.port} not ready after {timeout}s: {last}")

    def execute(self, sql: str, params: Any = None) -> Any:
        """Run one statement (autocommit). Rows for queries, else rowcount."""
        conn = self._connect()
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql, params)
                if cur.description is not None:
                    return cur.fetchall()
                return cur.rowcount
        finally:
            conn.close()

    def apply_schema(self, path: str | os.PathLike[str]) -> None:
        self.execute(Path(path).read_text())

    def add_merchant(self, id: str, shop_domain: str, active: bool = True) -> None:
        """Insert (or update) a merchants row."""
        self.execute(
            "INSERT INTO merchants (id, shop_domain, active) VALUES (%s, %s, %s) "
            "ON CONFLICT (id) DO UPDATE SET shop_domain = EXCLUDED.shop_domain, "
            "active = EXCLUDED.active",
            (id, shop_domain, active),
        )

    def set_active(self, shop_domain: str, active: bool) -> None:
        self.execute(
            "UPDATE merchants SET active = %s WHERE shop_domain = %s", (active, shop_domain)
        )

    def freeze(self) -> None:
        """SIGSTOP the postmaster and all its backends: every query hangs."""
        self._signal_group(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal_group(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the postmaster and its backends (a crash); restart() recovers."""
        self._signal_group(signal.SIGKILL)
        super().kill()

    def _signal_group(self, sig: int) -> None:
        # postgres was started in its own session, so its process group holds
        # exactly the postmaster and its backends.
        if self.running:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def _shutdown(self) -> None:
        if self.running:
            self.thaw()
        # SIGINT to the postmaster = ``pg_ctl stop -m fast``.
        self._reap(signal.SIGINT, 30)

    def stop(self) -> None:
        """Fast shutdown by PID, remove the data dir."""
        self._shutdown()
        self._cleanup()
        self._prepared = False

    def restart(self, timeout: float = 30.0) -> PostgresServer:
        """Fast shutdown and start again: same port, same data."""
        self._shutdown()
        return self.start(timeout)


# ----------------------------------------------------------------------------
# nginx
# ----------------------------------------------------------------------------

NGINX_MODULES_DIR = "/usr/lib/nginx/modules"


def nginx_main_conf(
    http_body: str,
    *,
    modules: Iterable[str] = (),
    worker_connections: int = 4096,
    worker_processes: int = 1,
) -> str:
    """A complete nginx.conf around ``http_body`` (the inside of ``http {}``).

    Logs and temp paths are relative to the prefix dir that
    :class:`NginxServer` creates.  ``modules`` are module names such as
    ``"ngx_nchan_module"``.  Do not set ``daemon``/``pid``: NginxServer does.
    """
    loads = "".join(f"load_module modules/{m}.so;\n" for m in modules)
    return f"""{loads}worker_processes {worker_processes};
error_log logs/error.log info;
events {{ worker_connections {worker_connections}; }}
http {{
    access_log logs/access.log;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
{http_body}
}}
"""


class NginxServer(_Service):
    """nginx with a caller-supplied nginx.conf in a throwaway prefix dir.

    Runs ``nginx -p DIR -c nginx.conf -e DIR/logs/error.log
    -g 'daemon off; pid DIR/nginx.pid;'``.  In ``conf_text`` the token
    ``@PREFIX@`` is replaced by DIR; relative paths (``logs/access.log``,
    ``modules/ngx_nchan_module.so``) are relative to DIR.  When ``port`` is
    given, ``start()`` waits until it accepts connections.
    """

    name = "nginx"

    def __init__(self, conf_text: str, port: int | None = None) -> None:
        super().__init__()
        self.conf_text = conf_text
        self.port = port
        self.binary = shutil.which("nginx") or "/usr/sbin/nginx"

    @property
    def prefix(self) -> Path:
        return self._make_tmpdir()

    def __repr__(self) -> str:
        return f"<NginxServer prefix={self.tmpdir} pid={self.pid}>"

    def _prepare(self) -> None:
        d = self.prefix
        os.chmod(d, 0o755)  # workers run as an unprivileged user
        for sub in ("logs", "tmp"):
            (d / sub).mkdir(exist_ok=True)
        if not (d / "modules").exists() and os.path.isdir(NGINX_MODULES_DIR):
            (d / "modules").symlink_to(NGINX_MODULES_DIR)
        (d / "nginx.conf").write_text(self.conf_text.replace("@PREFIX@", str(d)))

    def start(self, timeout: float = 10.0) -> NginxServer:
        if self.running:
            return self
        if not os.path.exists(self.binary):
            raise ServiceError("nginx not found (run tools/bootstrap.sh)")
        self._prepare()
        d = self.prefix
        pidfile = d / "nginx.pid"
        with contextlib.suppress(FileNotFoundError):
            pidfile.unlink()
        self._spawn(
            [
                self.binary, "-p", f"{d}/", "-c", "nginx.conf",
                "-e", str(d / "logs" / "error.log"),
                "-g", f"daemon off; pid {pidfile};",
            ],
            cwd=str(d),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise ServiceError(
                    f"nginx exited ({self.proc and self.proc.returncode}):\n"
                    f"{self.error_log_text()[-4000:]}"
                )
            if pidfile.exists() and (self.port is None or port_open(self.port)):
                return self
            time.sleep(0.02)
        raise ServiceError(f"nginx not ready after {timeout}s:\n{self.error_log_text()[-4000:]}")

    def access_log_text(self) -> str:
        try:
            return (self.prefix / "logs" / "access.log").read_text(errors="replace")
        except OSError:
            return ""

    def error_log_text(self) -> str:
        parts = []
        for p in (self.prefix / "logs" / "error.log", self.log_path):
            with contextlib.suppress(OSError):
                parts.append(p.read_text(errors="replace"))
        return "".join(parts)

    def reload(self) -> None:
        """Re-read nginx.conf (SIGHUP to the master PID)."""
        self._prepare()
        self._signal(signal.SIGHUP)

    def stop(self) -> None:
        self._reap(signal.SIGTERM, 10)
        self._cleanup()

    def restart(self, timeout: float = 10.0) -> NginxServer:
        self._reap(signal.SIGTERM, 10)
        return self.start(timeout)


# ----------------------------------------------------------------------------
# TLS certificate
# ----------------------------------------------------------------------------


def self_signed_cert(
    directory: str | os.PathLike[str],
    names: Sequence[str] = ("localhost", "127.0.0.1", "::1"),
    days: int = 7,
) -> tuple[Path, Path]:
    """A throwaway self-signed certificate: ``(cert.pem, key.pem)`` in ``directory``.

    ECDSA P-256, valid ``days`` days, with ``names`` (DNS names or IP
    addresses) as subjectAltName; the key file is mode 0600.  For tests and
    ``make run`` only: browsers reject it unless told to ignore certificate
    errors.  Made with the ``openssl`` command (Debian package ``openssl``).
    """
    import ipaddress

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cert, key = d / "cert.pem", d / "key.pem"
    sans = []
    for name in names:
        try:
            ipaddress.ip_address(name)
            sans.append(f"IP:{name}")
        except ValueError:
            sans.append(f"DNS:{name}")
    openssl = shutil.which("openssl") or "/usr/bin/openssl"
    out = subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", str(days), "-subj", f"/CN={names[0]}",
            "-addext", "subjectAltName=" + ",".join(sans),
            "-keyout", str(key), "-out", str(cert),
        ],
        capture_output=True, text=True, timeout=30,
    )
    if out.returncode != 0:
        raise ServiceError(f"openssl could not make a certificate: {out.stderr.strip()}")
    os.chmod(key, 0o600)
    return cert, key


# ----------------------------------------------------------------------------
# Prometheus
# ----------------------------------------------------------------------------


class PrometheusServer(_Service):
    """A throwaway Prometheus (Debian's ``prometheus``) on 127.0.0.1.

    ``PrometheusServer(config_text, rule_files={name: text}, port=None)``:
    the config and rule files are written into the temp dir (``@DIR@`` in any
    of them is replaced by it, so ``rule_files: ["@DIR@/alerts.yml"]`` works);
    the TSDB lives there too.  ``start()`` waits for ``/-/ready``;
    :meth:`api` queries the HTTP API.
    """

    name = "prometheus"

    def __init__(
        self,
        config_text: str,
        rule_files: dict[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        super().__init__()
        self.config_text = config_text
        self.rule_files = dict(rule_files or {})
        self.port = port or free_port()
        self.binary = shutil.which("prometheus") or "/usr/bin/prometheus"

    def __repr__(self) -> str:
        return f"<PrometheusServer 127.0.0.1:{self.port} pid={self.pid}>"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _prepare(self) -> Path:
        d = self._make_tmpdir()
        for name, text in self.rule_files.items():
            (d / name).write_text(text.replace("@DIR@", str(d)))
        path = d / "prometheus.yml"
        path.write_text(self.config_text.replace("@DIR@", str(d)))
        (d / "data").mkdir(exist_ok=True)
        return path

    def start(self, timeout: float = 20.0) -> PrometheusServer:
        if self.running:
            return self
        if not os.path.exists(self.binary):
            raise ServiceError("prometheus not found (run tools/bootstrap.sh)")
        config = self._prepare()
        d = self._make_tmpdir()
        self._spawn(
            [
                self.binary,
                f"--config.file={config}",
                f"--web.listen-address={HOST}:{self.port}",
                f"--storage.tsdb.path={d / 'data'}",
                "--storage.tsdb.retention.time=1d",
                "--web.enable-lifecycle",
                "--log.level=warn",
            ],
            cwd=str(d),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise ServiceError(
                    f"prometheus exited ({self.proc and self.proc.returncode}); "
                    f"log:\n{_tail(self.log_path)}"
                )
            with contextlib.suppress(OSError, ValueError):
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            time.sleep(0.05)
        raise ServiceError(f"prometheus not ready after {timeout}s:\n{_tail(self.log_path)}")

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/{path}?params``: the ``data`` of a successful answer.

        Raises :class:`ServiceError` with Prometheus' error text otherwise.
        """
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as e:
            body = json.loads(e.read() or b"{}")
        if body.get("status") != "success":
            raise ServiceError(f"prometheus {path}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result list (vector/matrix results)."""
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        """The active (pending or firing) alerts."""
        alerts: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return alerts

    def stop(self) -> None:
        """SIGTERM by PID, wait, remove the temp dir (TSDB included)."""
        self._reap(signal.SIGTERM, 15)
        self._cleanup()
