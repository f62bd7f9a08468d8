"""One trial: start a system, open N streams (in stages), measure, publish at each rate.

Returns one row per rate; the open/idle/memory figures are the same in each
row of a trial. CPU is utime+stime from /proc over the server's process tree
(and Redis, and PostgreSQL for stream opens), memory is PSS.
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

from bench import procstat
from bench.gateway_system import Gateway
from bench.pool import ClientPool
from bench.report import ok
from bench.systems import Naive, Nchan, System, parse_system

__all__ = ["make_system", "run_trial"]

_COUNTERS = ("gateway_redis_messages_total", "gateway_events_delivered_total")


def make_system(name: str, tmp: Path, pg, streams: int, max_new_per_s: int = 1_000_000) -> System:
    kind, workers = parse_system(name)
    if kind == "gateway":
        return Gateway(name, workers, tmp, pg.dsn, streams, max_new_per_s)
    if kind == "naive":
        return Naive(name, workers, tmp)
    return Nchan(name, workers, tmp, use_redis=(kind == "nchan-redis"))


def gateway_samples(port: int) -> dict[str, float]:
    """Every sample of the gateway's /metrics (``name{labels}`` -> value, summed over
    workers); empty if unreadable."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except Exception:
        return {}
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = samples.get(key, 0.0) + float(value)
    return samples


def gateway_counters(port: int) -> dict[str, float]:
    """Messages from Redis and deliveries (empty if unreadable)."""
    samples = gateway_samples(port)
    return {name: samples[name] for name in _COUNTERS if name in samples}


def _cpu(pids: list[int]) -> float:
    return procstat.cpu_seconds(pids) if pids else 0.0


def _tree_cpu(pid: int | None) -> float:
    """CPU of a process tree now (backends forked since the last call included)."""
    return procstat.cpu_seconds(procstat.tree(pid)) if pid else 0.0


def run_trial(name: str, n: int, m: int, rates: list[float], dur: float, drain: float,
              tmp: Path, pg, *, procs: int = 1, stages: tuple[float, ...] = (0.25, 0.5, 1.0),
              idle_s: float = 0.0, payload: int = 0, trial_no: int = 0,
              max_new_per_s: int = 1_000_000, stop_on_fail: bool = False) -> list[dict]:
    """Run one system at every rate in ``rates``; one row per rate."""
    base: dict = {"system": name, "streams": n, "merchants": m, "duration": dur,
                  "workers": parse_system(name)[1], "ts": time.strftime("%Y-%m-%dT%H:%M:%S")}
    rows: list[dict] = []
    sysobj = make_system(name, tmp, pg, n, max_new_per_s)
    pool: ClientPool | None = None
    try:
        sysobj.start()
        base["notes"] = getattr(sysobj, "notes", [])
        time.sleep(0.5)
        pids = procstat.tree(sysobj.root_pid)
        rpid = sysobj.redis_pid()
        rp = [rpid] if rpid else []
        mem0, rss0 = _started(base, pids, idle_s)
        pool = ClientPool(sysobj.client_args(), n, m, procs, drain, payload, trial_no)
        pids = _open_streams(base, sysobj, pool, stages, pids, rp,
                             pg.pid if pg is not None else None, mem0, rss0)
        if idle_s:
            c0, r0, t0 = _cpu(pids), _cpu(rp), time.monotonic()
            time.sleep(idle_s)
            wall = time.monotonic() - t0
            base["idle_cpu_pct"] = round(100 * (_cpu(pids) - c0) / wall, 2)
            base["idle_redis_cpu_pct"] = round(100 * (_cpu(rp) - r0) / wall, 2)
        for rate in rates:
            row = _rate_row(dict(base, rate=rate), sysobj, pool, pids, rp, dur)
            rows.append(row)
            if "error" in row or (stop_on_fail and not ok(row)):
                break
    except Exception as e:
        rows.append(dict(base, rate=rates[0] if rates else 0, error=f"{type(e).__name__}: {e}"))
    finally:
        if pool is not None:
            pool.close()
        sysobj.stop()
    log = tmp / f"{name}.log"
    for row in rows:
        if "error" in row and log.exists():
            row["server_log_tail"] = log.read_text(errors="replace")[-1500:]
    return rows


def _started(base: dict, pids: list[int], idle_s: float) -> tuple[int, int]:
    """The started system's size, and its idle CPU before any stream: (memory, RSS) in kB."""
    base["server_procs"] = len(pids)
    mem0 = procstat.memory_kb(pids)
    rss0 = procstat.rss_kb(pids)
    base["server_mem0_kb"] = mem0
    base["tcp_buffers0_kb"] = procstat.tcp_buffers_kb()
    base["slab0_kb"] = procstat.slab_kb()
    if idle_s:
        c0, t0 = _cpu(pids), time.monotonic()
        time.sleep(idle_s)
        base["idle0_cpu_pct"] = round(100 * (_cpu(pids) - c0) / (time.monotonic() - t0), 2)
    return mem0, rss0


def _open_streams(base: dict, sysobj: System, pool: ClientPool, stages: tuple[float, ...],
                  pids: list[int], rp: list[int], pg_pid: int | None, mem0: int,
                  rss0: int) -> list[int]:
    """Open the streams in ``stages``: their CPU, time and memory into ``base``; the pids."""
    n = base["streams"]
    curve = [[0, mem0]]
    c0, r0, g0, t0 = _cpu(pids), _cpu(rp), _tree_cpu(pg_pid), time.monotonic()
    ready: dict = {}
    for frac in stages:
        ready = pool.open(frac)
        if frac < 1.0:
            time.sleep(0.5)
            curve.append([ready["ready"], procstat.memory_kb(procstat.tree(sysobj.root_pid))])
    open_wall = time.monotonic() - t0
    pids = procstat.tree(sysobj.root_pid)
    base["open_cpu_s"] = round(_cpu(pids) - c0, 3)
    base["open_redis_cpu_s"] = round(_cpu(rp) - r0, 3)
    base["open_pg_cpu_s"] = round(_tree_cpu(pg_pid) - g0, 3) if pg_pid else None
    base["open_wall_s"] = round(open_wall, 3)
    base["open_s"] = ready["open_s"]
    base["open_status"] = ready["status"]
    base["open_cpu_us_per_stream"] = round(base["open_cpu_s"] * 1e6 / n, 1)
    time.sleep(1.0)
    pids = procstat.tree(sysobj.root_pid)
    sysobj.pids = pids  # stop() SIGKILLs any of these left after SIGTERM
    mem1 = procstat.memory_kb(pids)
    curve.append([n, mem1])
    base.update(server_procs=len(pids), server_mem_kb=mem1, mem_curve=curve,
                kb_per_stream=round((mem1 - mem0) / n, 2),
                rss_kb_per_stream=round((procstat.rss_kb(pids) - rss0) / n, 2),
                # beside it, what the kernel holds for the idle sockets (both ends,
                # machine-wide): their buffers, and the slab their structures live in
                tcp_buffers_kb_per_stream=round(
                    (procstat.tcp_buffers_kb() - base["tcp_buffers0_kb"]) / n, 2),
                slab_kb_per_stream=round((procstat.slab_kb() - base["slab0_kb"]) / n, 2))
    return pids


def _rate_row(row: dict, sysobj: System, pool: ClientPool, pids: list[int], rp: list[int],
              dur: float) -> dict:
    """One publishing window at ``row["rate"]``: delivery, latency and CPU into ``row``."""
    try:
        cnt0 = gateway_counters(sysobj.port) if isinstance(sysobj, Gateway) else {}
        cpu0, rcpu0, t0 = _cpu(pids), _cpu(rp), time.monotonic()
        res = pool.window(row["rate"], dur)
        wall = time.monotonic() - t0
        cpu, rcpu = _cpu(pids) - cpu0, _cpu(rp) - rcpu0
        row.update(res)
        row["window_s"] = round(wall, 3)
        row["server_cpu_s"] = round(cpu, 4)
        row["redis_cpu_s"] = round(rcpu, 4)
        d = max(res["delivered"], 1)
        row["delivered_pct"] = round(100 * res["delivered"] / max(res["expected"], 1), 2)
        row["server_cpu_pct"] = round(100 * cpu / wall, 1)
        row["redis_cpu_pct"] = round(100 * rcpu / wall, 1)
        row["us_per_event"] = round((cpu + rcpu) * 1e6 / d, 2)
        row["us_per_event_server"] = round(cpu * 1e6 / d, 2)
        if cnt0:
            time.sleep(1.2)  # the gateway syncs its counters every second
            cnt1 = gateway_counters(sysobj.port)
            for key, counter in (("gw_messages", "gateway_redis_messages_total"),
                                 ("gw_deliveries", "gateway_events_delivered_total")):
                row[key] = cnt1.get(counter, 0) - cnt0.get(counter, 0)
    except Exception as e:
        row["error"] = f"{type(e).__name__}: {e}"
    return row
