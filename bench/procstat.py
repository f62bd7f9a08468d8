"""CPU and memory of process trees, read from /proc."""

from __future__ import annotations

import os

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    # comm may contain spaces; fields after the closing paren are stable
    return raw[raw.rfind(")") + 2 :].split()


def tree(root: int) -> list[int]:
    """``root`` and all its descendants (one scan of /proc)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields:
            children.setdefault(int(fields[1]), []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of ``pids`` (threads included), in seconds."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / CLK_TCK


def _proc_kb(pid: int, name: str, key: str) -> int | None:
    """The kB figure on the ``key`` line of /proc/PID/NAME (0 if absent); None if unreadable."""
    try:
        with open(f"/proc/{pid}/{name}") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        return None
    return 0


def rss_kb(pids: list[int]) -> int:
    """Sum of RSS (resident pages, shared ones counted in every process), in KB."""
    return sum(_proc_kb(pid, "status", "VmRSS:") or 0 for pid in pids)


def memory_kb(pids: list[int]) -> int:
    """Sum of PSS (proportional set size; shared pages split between sharers), in KB.

    Falls back to RSS where smaps_rollup is unavailable.
    """
    total = 0
    for pid in pids:
        pss = _proc_kb(pid, "smaps_rollup", "Pss:")
        total += rss_kb([pid]) if pss is None else pss
    return total


def _machine_figure(path: str, prefix: str, key: str | None = None) -> int:
    """The number after `key` (or the first one) on the `prefix` line of `path`; 0 if none."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(prefix):
                    fields = line.split()
                    return int(fields[fields.index(key) + 1] if key else fields[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def tcp_buffers_kb() -> int:
    """Kernel memory of every TCP socket's buffers on the machine, in KB (the ``mem``
    pages of /proc/net/sockstat): both ends of loopback streams count, idle ones little."""
    return _machine_figure("/proc/net/sockstat", "TCP:", "mem") * os.sysconf("SC_PAGE_SIZE") // 1024


def slab_kb() -> int:
    """Kernel slab memory of the machine, in KB (/proc/meminfo ``Slab``): a socket's
    structures (sock, inode, file, epoll entry) live there, its buffers do not."""
    return _machine_figure("/proc/meminfo", "Slab:")


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent busy since boot (/proc/stat: all
    but idle and iowait), so a window's difference shows what else ran."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / CLK_TCK


def load_average() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]
