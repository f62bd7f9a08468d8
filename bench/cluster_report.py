"""``python -m bench.cluster``, the pure part: Redis INFO parsing, the tables, the docs page."""

from __future__ import annotations

__all__ = ["cmdstat", "failures", "fmt_table", "kv_info", "markdown", "stats_delta", "tables"]

GOAL = 1.10  # the cluster's gateway CPU per delivery within 10 % of a single Redis


def kv_info(text: str) -> dict[str, int]:
    """``CLUSTER INFO`` (``key:value`` lines) -> the integer fields."""
    out: dict[str, int] = {}
    for line in str(text).split():
        key, sep, value = line.partition(":")
        if sep and value.lstrip("-").isdigit():
            out[key] = int(value)
    return out


def cmdstat(info: dict | str, command: str) -> tuple[int, int]:
    """``(calls, usec)`` of one command from ``INFO commandstats`` (redis-py dict or raw text)."""
    key = f"cmdstat_{command.lower()}"
    if isinstance(info, str):
        for line in info.splitlines():
            name, _, rest = line.strip().partition(":")
            if name == key:
                fields = dict(f.split("=", 1) for f in rest.split(",") if "=" in f)
                return int(fields.get("calls", 0)), int(float(fields.get("usec", 0)))
        return 0, 0
    entry = info.get(key) or {}
    return int(entry.get("calls", 0)), int(entry.get("usec", 0))


def stats_delta(before: dict[int, dict], after: dict[int, dict]) -> dict[str, dict]:
    """Per node: calls/usec and bus counters between two ``bench.cluster.node_stats`` reads."""
    out: dict[str, dict] = {}
    for port, a in after.items():
        b = before[port]
        row = {"role": a["role"], "of": a.get("of"), "slots": a["slots"],
               "cpu_ms": round(1000 * (a["cpu_s"] - b["cpu_s"]), 1)}
        for cmd in ("spublish", "publish"):
            row[f"{cmd}_calls"] = a[cmd][0] - b[cmd][0]
            row[f"{cmd}_usec"] = a[cmd][1] - b[cmd][1]
        for k, v in a["bus"].items():
            row["bus_" + k] = v - b["bus"].get(k, 0)
        out[str(port)] = row
    return out


def fmt_table(head: list[str], rows: list[list[str]]) -> str:
    """Fixed-width columns: the first left-aligned, the others right-aligned."""
    cells = [head, *rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    return "\n".join("  ".join(v.ljust(widths[0]) if i == 0 else v.rjust(widths[i])
                               for i, v in enumerate(r)) for r in cells)


def _order(nodes: dict[str, dict]) -> list[str]:
    """Each primary (by port) followed by its replicas."""
    def key(p: str) -> tuple[int, int]:
        n = nodes[p]
        return (int(p), 0) if n["role"] == "primary" else (int(n.get("of") or 0), int(p))
    return sorted(nodes, key=key)


def _role(n: dict) -> str:
    return f"replica of {n['of']}" if n["role"] == "replica" and n.get("of") else n["role"]


def spublish_table(sp: dict, merchants: dict[str, int]) -> str:
    nodes = sp["nodes"]
    total = sum(n["spublish_calls"] for n in nodes.values()) or 1
    rows = []
    for p in _order(nodes):
        n = nodes[p]
        calls = n["spublish_calls"]
        rows.append([p, _role(n), str(n["slots"] or "-"), str(merchants.get(p, "-")),
                     str(sp["sent_by_bench"].get(p, "-")), str(calls),
                     f"{100 * calls / total:.1f}%" if calls else "-",
                     f"{n['spublish_usec'] / calls:.2f}" if calls else "-",
                     str(n.get("bus_publishshard_received", 0)), f"{n['cpu_ms']:.0f}"])
    return fmt_table(["node", "role", "slots", "merchants", "sent", "cmdstat_spublish",
                      "share", "us/call", "bus shard recv", "CPU ms"], rows)


def publish_table(pub: dict) -> str:
    nodes = pub["nodes"]
    rows = []
    for p in _order(nodes):
        n = nodes[p]
        calls = n["publish_calls"]
        rows.append([p + (" <- sent here" if p == str(pub["sent_to"]) else ""), _role(n),
                     str(calls), f"{n['publish_usec'] / calls:.2f}" if calls else "-",
                     str(n.get("bus_publish_received", 0)), str(n.get("bus_publish_sent", 0)),
                     f"{n['cpu_ms']:.0f}"])
    return fmt_table(["node", "role", "cmdstat_publish", "us/call", "bus publish recv",
                      "bus publish sent", "CPU ms"], rows)


def cpu_table(cpu: dict) -> str:
    rows = []
    for i, t in enumerate(cpu["trials"], 1):
        rows.append([f"{i} {t['system']}", f"{t['delivered']}/{t['expected']}",
                     f"{t['p50_ms'] or 0:.1f}", f"{t['p99_ms'] or 0:.1f}",
                     f"{t['gateway_cpu_pct']:.1f}", f"{t['us_per_delivery']:.2f}",
                     f"{t['redis_us_per_delivery']:.2f}"])
    return fmt_table(["window", "delivered", "p50 ms", "p99 ms", "gateway CPU %",
                      "gateway us/delivery", "Redis us/delivery"], rows)


def failures(out: dict) -> list[str]:
    """The bounds ``verdict`` reports failed: an event not delivered, cluster/single OVER
    ``GOAL``."""
    cpu = out.get("cpu", {})
    problems = [] if cpu.get("all_delivered", True) else ["NOT every event was delivered"]
    if cpu.get("ratio") is not None and cpu["ratio"] > GOAL:
        problems.append(f"cluster/single = {cpu['ratio']}, OVER the {GOAL:.2f} goal")
    return problems


def verdict(cpu: dict) -> str:
    med, ratio = cpu["median_us_per_delivery"], cpu["ratio"]
    goal = "" if ratio is None else (
        f" ({'within' if ratio <= GOAL else 'OVER'} the {GOAL:.2f} goal)")
    lost = "" if cpu.get("all_delivered", True) else "; NOT every event was delivered"
    return (f"median gateway CPU per delivery: single {med['single']:.2f} us, cluster "
            f"{med['cluster']:.2f} us; cluster/single = {ratio}{goal}{lost}")


def tables(out: dict) -> str:
    """Everything the run prints: the SPUBLISH and PUBLISH tables, then CPU per delivery."""
    p, sp, pub = out["params"], out["spublish"], out["publish"]
    return "\n".join([
        f"N={p['streams']} streams per gateway over M={p['merchants']} merchants, "
        f"R={p['rate']:g} msg/s for D={p['duration']:g} s per window, {out['cpus']} cpus, "
        f"load {out['loadavg_before']:.2f} before the run",
        "",
        f"1a. SPUBLISH: K={sp['k']} messages (the first cluster window), each to the primary "
        "owning the merchant's slot; counters since CONFIG RESETSTAT",
        spublish_table(sp, out["merchants_per_primary"]),
        "(cmdstat_spublish also counts the gateway's delivery canary: one SPUBLISH per "
        "second on each primary; replicas get the shard's messages over the bus)",
        "",
        f"1b. classic PUBLISH: K={pub['k']} messages on the same channels, all sent to one "
        "node; the cluster bus copies every one to every other node",
        publish_table(pub),
        "",
        "2. gateway CPU per delivered event (one worker each; same N, M, R, D; alternating)",
        cpu_table(out["cpu"]),
        verdict(out["cpu"]),
    ])


def markdown(out: dict, text: str) -> str:
    """docs/bench/cluster.md: what was measured, how, the printed tables, the command."""
    return f"""# Redis Cluster: where publishes land, CPU per delivery

Measured {out['measured_at']} in {out['run_s']:g} s with `{out['command'].strip()}`
(also `make bench-cluster`); raw figures in [cluster.json](cluster.json).

One run on 127.0.0.1 starts a local Redis Cluster (3 primaries + 3 replicas,
`tools/cluster.py`), a PostgreSQL holding merchants `m0..m{{M-1}}`, and two
one-worker gateways: one on a single Redis, one with `redis.cluster: true`
(one sharded pub/sub connection per primary; channels
`merchant:{{m<i>}}:progress`, the merchant id is the hash tag). The bench
load client (`bench/client.py`) holds N streams on each gateway, stream `j`
on merchant `j % M`; message `k` goes to merchant `k % M`.

1. **Where publishes land.** Before the first cluster window every node gets
   `CONFIG RESETSTAT`; after it, `INFO commandstats` (`cmdstat_spublish`) and
   `CLUSTER INFO` (`cluster_stats_messages_publishshard_received`) are read on
   every node. Each SPUBLISH goes to the primary owning the channel's slot, so
   each primary handles the messages of its own merchants (about a third) and
   only its replica hears of them. Then K classic `PUBLISH` on the same
   channels are sent to one node: the cluster bus forwards every one to every
   other node (`cluster_stats_messages_publish_received` = K on all five), so
   classic pub/sub does not scale out with the cluster.
2. **Gateway CPU per delivery.** Both gateways hold their streams the whole
   run; windows alternate (single, cluster, cluster, single, ...). Each window
   publishes R msg/s for D s from the bench process (PUBLISH on the single
   Redis; SPUBLISH pipelined to each owning primary on the cluster) and waits
   until every expected event arrived. Gateway CPU is utime+stime of its
   process tree from /proc over the window, divided by the events delivered;
   Redis CPU is the single server, or all six cluster nodes (replicas and the
   cluster's own bus traffic included, so it is not a per-command cost). The machine has
   two shared cores, so only the ratio measured in the same run is quoted;
   figures move by ±30 % between runs.

```
{text}
```

`CPU ms` is the node's CPU over the window (background cluster work
included). Run it again with `python -m bench.cluster` (`--streams`,
`--merchants`, `--rate`, `--duration`, `--rounds`; `--docs ''` leaves this
page alone); it stops by itself in under three minutes (about two here).
"""
