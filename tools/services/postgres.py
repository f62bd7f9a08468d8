"""A throwaway PostgreSQL cluster on 127.0.0.1, copied from a per-process template."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
from pathlib import Path
from typing import Any

from .base import HOST, Service, clean_env, free_port, port_open
from .postgres_template import chown_tree, os_user, pg_bindir, pg_template, run_as

__all__ = ["SCHEMA", "PostgresServer", "pg_bindir"]

SCHEMA = Path(__file__).resolve().parents[2] / "config" / "schema.sql"
"""The shipped schema: the one every test, run and bench applies; never written."""


class PostgresServer(Service):
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
        template = pg_template(self.USER)
        tmp = self._make_tmpdir()
        os.chmod(tmp, 0o755)
        shutil.copytree(template / "data", self.data_dir, symlinks=True)
        (tmp / "sock").mkdir(exist_ok=True)
        with open(self.data_dir / "postgresql.conf", "a") as f:
            f.write(f"port = {self.port}\nunix_socket_directories = '{tmp / 'sock'}'\n")
        self._os_user = os_user()
        chown_tree(tmp, self._os_user)
        os.chmod(self.data_dir, 0o700)
        self._prepared = True

    def start(self, timeout: float = 30.0) -> PostgresServer:
        if self.running:
            return self
        self._prepare()
        # A crashed (SIGKILLed) postmaster leaves postmaster.pid behind; postgres
        # itself detects that the PID is gone and starts anyway.
        self._spawn(
            [str(pg_bindir() / "postgres"), "-D", str(self.data_dir)],
            cwd=str(self._make_tmpdir()),
            env=clean_env(),
            **run_as(self._os_user),
        )
        self.wait_ready(timeout)
        return self

    def _connect(self, timeout: float = 5.0) -> Any:
        import psycopg2

        return psycopg2.connect(
            host=HOST, port=self.port, user=self.USER, dbname=self.DATABASE,
            connect_timeout=max(1, int(timeout)),
        )

    def _accepts(self) -> bool:
        if not port_open(self.port):
            return False
        self._connect(2).close()
        return True

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until a connection to the ``gateway`` database succeeds."""
        import psycopg2

        self.await_ready(self._accepts, timeout, interval=0.03, errors=(psycopg2.Error,))

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

    def apply_schema(self, path: str | os.PathLike[str] = SCHEMA) -> None:
        """Run a schema file (by default the shipped config/schema.sql)."""
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
        """The postmaster and every child of it, by PID. Not its process group:
        each backend calls setsid() and leads a group of its own."""
        if self.proc is None or not self.running:
            return
        pid = self.proc.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            children = []
        for target in [pid, *map(int, children)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, sig)

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
