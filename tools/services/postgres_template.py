"""PostgreSQL binaries, the account to run them as, and the initdb'd template.

``initdb`` is slow; :func:`pg_template` runs it once per process and every
:class:`~tools.services.postgres.PostgresServer` copies the result.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

from .base import ServiceError, clean_env

__all__ = ["chown_tree", "os_user", "pg_bindir", "pg_template", "run_as"]

_USER_FALLBACK = "gatewaytest"
_CONF = (
    "\n# throwaway test server\n"
    "listen_addresses = '127.0.0.1'\n"
    "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
    "shared_buffers = 16MB\nmax_connections = 200\n"
    "dynamic_shared_memory_type = posix\n"
    "logging_collector = off\nlog_min_messages = warning\n"
    "max_wal_size = 256MB\ncheckpoint_timeout = 1h\n"
)


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
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
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


def _version_key(p: str) -> float:
    try:
        return float(Path(p).parent.name)
    except ValueError:
        return 0.0


def os_user() -> pwd.struct_passwd | None:
    """The unprivileged account to run postgres as, or None when not root.

    PostgreSQL refuses to run as root.  As root we use the ``postgres`` account
    that Debian's ``postgresql`` package creates, or create a system account
    ``gatewaytest`` when it is missing.
    """
    if os.geteuid() != 0:
        return None
    for name in ("postgres", _USER_FALLBACK):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    subprocess.run(
        [
            "useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
            "--shell", "/usr/sbin/nologin", _USER_FALLBACK,
        ],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam(_USER_FALLBACK)


def run_as(user: pwd.struct_passwd | None) -> dict[str, Any]:
    """``subprocess`` keyword arguments that run a child as ``user`` (none: as us)."""
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def chown_tree(path: Path, user: pwd.struct_passwd | None) -> None:
    """Give ``path`` and everything under it to ``user`` (None: leave it)."""
    if user is None:
        return
    os.chown(path, user.pw_uid, user.pw_gid)
    for root, dirs, files in os.walk(path):
        for n in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                os.lchown(os.path.join(root, n), user.pw_uid, user.pw_gid)


_TEMPLATE_LOCK = threading.Lock()
_TEMPLATE: Path | None = None


def pg_template(superuser: str) -> Path:
    """An initdb'd data dir (with database ``gateway``), made once per process."""
    global _TEMPLATE
    with _TEMPLATE_LOCK:
        if _TEMPLATE is not None and _TEMPLATE.exists():
            return _TEMPLATE
        bindir = pg_bindir()
        user = os_user()
        root = Path(tempfile.mkdtemp(prefix="gw-pgtemplate-"))
        os.chmod(root, 0o755)
        data = root / "data"
        chown_tree(root, user)
        _run(root, user, "initdb", [
            str(bindir / "initdb"), "-D", str(data), "-U", superuser,
            "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
        ])
        with open(data / "postgresql.conf", "a") as f:
            f.write(_CONF)
        _run(root, user, "createdb", [
            str(bindir / "postgres"), "--single", "-D", str(data), "-c", "fsync=off",
            "postgres",
        ], stdin="CREATE DATABASE gateway;\n")
        _TEMPLATE = root
        atexit.register(shutil.rmtree, root, True)
        return root


def _run(root: Path, user: pwd.struct_passwd | None, what: str, argv: list[str],
         stdin: str | None = None) -> None:
    """One setup command in ``root``; on failure the template dir goes too."""
    out = subprocess.run(
        argv, input=stdin, cwd=str(root), env=clean_env(), capture_output=True, text=True,
        start_new_session=True,  # a terminal Ctrl-C reaches only our parent
        **run_as(user),
    )
    if out.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise ServiceError(f"{what} failed:\n{out.stdout}\n{out.stderr}")
