"""Port checks for ``make run``: is the port free, and is it our process that answers?

`port_problem` tries the bind the gateway will do (before it starts), so a
port already in use is reported at once instead of a health check answered by
someone else. `served_by_tree` reads /proc (Linux) to tell whether the socket
listening on a port belongs to a given process or one of its descendants
(the gateway's workers); it answers None where /proc cannot tell.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

__all__ = ["port_problem", "probe_host", "served_by_tree"]

_LISTEN = "0A"  # TCP state LISTEN in /proc/net/tcp*


def probe_host(host: str) -> str:
    """The address to probe a server listening on `host` (wildcards -> loopback)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def port_problem(host: str, port: int) -> str | None:
    """Why the gateway could not listen on host:port right now, or None if it could."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        return f"cannot resolve server.host {host!r}: {exc.strerror}"
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            # what asyncio does for a server socket, so the answer matches its bind
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                return f"{address[0]}:{port}: {exc.strerror or exc}"
    return None


def _listening_inodes(port: int) -> set[str] | None:
    inodes: set[str] = set()
    readable = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == _LISTEN:
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    return inodes if readable else None


def _descendants(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree = {root}
    grew = True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return tree


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def served_by_tree(port: int, root_pid: int) -> bool | None:
    """True if a socket listening on `port` belongs to `root_pid` or a descendant.

    False when listeners exist and none is ours; None when /proc cannot tell.
    """
    listening = _listening_inodes(port)
    if not listening:
        return None
    for pid in _descendants(root_pid):
        if _socket_inodes(pid) & listening:
            return True
    return False
