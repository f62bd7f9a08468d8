"""The printed result table and the pass/fail rule of ``--step``."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["COLS", "cluster_costs", "cluster_table", "costs_markdown", "merge_cluster_costs",
           "ok", "render_fleet", "table"]

COLS = [
    ("system", "system", "{}"),
    ("N", "streams", "{:d}"),
    ("R", "rate", "{:g}"),
    ("deliv/s", "delivered_per_s", "{:.0f}"),
    ("deliv%", "delivered_pct", "{:.2f}"),
    ("p50ms", "p50_ms", "{:.1f}"),
    ("p99ms", "p99_ms", "{:.1f}"),
    ("maxms", "max_ms", "{:.1f}"),
    ("srvCPU%", "server_cpu_pct", "{:.0f}"),
    ("redisCPU%", "redis_cpu_pct", "{:.0f}"),
    ("us/ev(s+r)", "us_per_event", "{:.1f}"),
    ("us/ev(srv)", "us_per_event_server", "{:.1f}"),
    ("KB/stream", "kb_per_stream", "{:.1f}"),
    ("RSS KB/st", "rss_kb_per_stream", "{:.1f}"),
    ("tcpKB/st", "tcp_buffers_kb_per_stream", "{:.1f}"),
    ("slabKB/st", "slab_kb_per_stream", "{:.1f}"),
    ("cliCPU%", "client_cpu_pct", "{:.0f}"),
]


def ok(row: dict) -> bool:
    """100 % delivered, p99 under 200 ms, no stream cut."""
    return (
        "error" not in row
        and row.get("delivered") == row.get("expected")
        and row.get("p99_ms", 1e9) < 200
        and row.get("closed_during", 1) == 0
    )


def table(rows: list[dict]) -> str:
    """Fixed-width table, one line per row; errors on one line of their own."""
    cells = [[h for h, _, _ in COLS]]
    for r in rows:
        if "error" in r:
            cells.append([r["system"], str(r.get("streams", "")), f"{r.get('rate', 0):g}",
                          "ERROR: " + r["error"][:150]])
            continue
        line = []
        for _, key, fmt in COLS:
            v = r.get(key)
            line.append("-" if v is None else fmt.format(v))
        cells.append(line)
    full = [c for c in cells if len(c) == len(COLS)]
    widths = [max(len(c[i]) for c in full) for i in range(len(COLS))]
    out = []
    for c in cells:
        if len(c) != len(COLS):
            out.append(f"{c[0]:<{widths[0]}}  {c[1]:>{widths[1]}}  {c[2]:>{widths[2]}}  {c[3]}")
        else:
            out.append("  ".join(
                v.ljust(widths[0]) if i == 0 else v.rjust(widths[i]) for i, v in enumerate(c)
            ))
    return "\n".join(out)


def costs_markdown(data: dict) -> str:
    """A unit-costs result file as a markdown table (name, value, how measured)."""
    lines = [f"Measured {data.get('measured_at', '?')} with `{data.get('command', '?')}`."]
    for m in data.get("merged", []):
        lines.append(f"`{m['costs']}`: measured {m['measured_at']} with `{m['command']}` and "
                     "merged into the file (the other costs are from the run above).")
    lines += ["", "| cost | value | how it was measured |", "|---|---|---|"]
    for name, c in data["costs"].items():
        unit = "µs" if c["unit"] == "us" else c["unit"]
        lines.append(f"| `{name}` | {c['value']:g} {unit} | {c['how']} |")
    return "\n".join(lines)


def cluster_costs(raw: dict) -> dict[str, dict]:
    """Unit-cost entries (value, unit, how) from ``bench.redis_cluster_costs``' result."""
    cl, rep, ratio = raw["cluster"], raw["cluster_replicas"], raw["ratio"]
    where = (f"local {raw['primaries']}+{raw['replicas']} cluster, summed over the primaries, "
             "1 subscriber per channel (SSUBSCRIBE)")

    def c(value: float, how: str, kind: str | None = None) -> dict:
        tail = f"; {ratio[kind]}x a single Redis in the same run" if kind else ""
        return {"value": round(max(value, 0.0), 3), "unit": "us", "how": how + tail}

    return {
        "redis_per_cluster_publish": c(cl["publish"], "Redis CPU per SPUBLISH, one per round "
                                       f"trip (32 connections), {where}", "publish"),
        "redis_per_cluster_publish_pipelined": c(cl["publish_pipelined"], "the same, pipelines "
                                                 "of 500 split per owning primary",
                                                 "publish_pipelined"),
        "redis_per_cluster_durable_publish": c(cl["durable"], "Redis CPU per publish.lua run "
                                               "(sharded: SPUBLISH, hash-tagged keys), one per "
                                               f"round trip, RedisCluster client, {where}",
                                               "durable"),
        "redis_per_cluster_durable_publish_pipelined": c(cl["durable_pipelined"], "the same, "
                                                         "publish_many pipelines of 500",
                                                         "durable_pipelined"),
        "redis_replica_per_cluster_publish": c(rep["publish"], "CPU of the replicas (summed) "
                                               "per SPUBLISH (the shard's bus message)"),
        "redis_replica_per_cluster_durable_publish": c(rep["durable"], "CPU of the replicas "
                                                       "(summed) per publish.lua run "
                                                       "(replicated writes, bus message)"),
    }


def merge_cluster_costs(path: Path, raw: dict, command: str) -> None:
    """Add the cluster costs and the raw result to a unit-costs file, saying so in it.

    The file's other costs are left as measured by their own run; ``merged``
    records when and by which command the cluster costs were added.
    """
    data = json.loads(path.read_text())
    data["costs"].update(cluster_costs(raw))
    data["redis_cluster"] = raw
    data["merged"] = [m for m in data.get("merged", []) if m.get("what") != "redis_cluster"] + [
        {"what": "redis_cluster", "costs": "redis_per_cluster_*, redis_replica_per_cluster_*",
         "measured_at": raw["measured_at"], "command": command}]
    path.write_text(json.dumps(data, indent=1) + "\n")


def cluster_table(raw: dict, kinds: tuple[str, ...]) -> str:
    """``bench.redis_cluster_costs``: single vs cluster per kind, us per message, replicas."""
    lines = [f"{'Redis CPU per message':<22} {'single us':>10} {'cluster us':>11} {'ratio':>6} "
             f"{'replicas us':>12}"]
    for k in kinds:
        lines.append(f"{k:<22} {raw['single'][k]:>10.2f} {raw['cluster'][k]:>11.2f} "
                     f"{raw['ratio'][k] or 0:>6.2f} {raw['cluster_replicas'][k]:>12.2f}")
    return "\n".join(lines)


def render_fleet(t, f) -> str:  # (Target, Fleet) from bench.capacity
    """The plan as aligned text."""
    r = f.restart
    lines = [
        f"target: {t.streams:,} streams, {t.merchants:,} merchants ({t.tabs:.1f} tabs each), "
        f"{t.rate:,.0f} msg/s of {t.payload} B, {'durable' if t.durable else 'plain'}"
        f"{' pipelined' if t.pipelined else ''} publish, "
        f"{t.churn_per_min:.0%}/min reopened",
        f"gateway     {f.processes} processes (1 core each; {f.hosts} host(s) of "
        f"{t.cores_per_host} cores), limited by {f.limited_by}",
        f"            CPU {f.gateway_cores} cores steady, memory {f.gateway_mem_gib} GiB",
        f"            {f.messages_in_per_s:,}/s messages in ({f.holders_per_merchant} processes "
        f"per merchant), {f.deliveries_per_s:,}/s deliveries",
        f"redis       {f.redis_primaries} primary(ies) ({f.redis_limited_by} bound): "
        f"{f.redis_cores} cores of pub/sub, {f.redis_egress_mbit:,} Mbit/s to gateways"
        + ("  (more than one: redis.cluster + sharded pub/sub)" if f.redis_primaries > 1 else ""),
        f"            Redis CPU per message: {f.redis_cost}"
        + ("" if f.redis_replica_cores is None
           else f"; replicas (one per primary) {f.redis_replica_cores} cores in total"),
        f"egress      {f.egress_mbit:,} Mbit/s to browsers ({f.egress_mbit_per_host:,} per host)",
        f"postgres    {f.pg_lookups_per_s:,} lookups/s steady (recheck + reopen cache misses)",
        f"restart     all streams reconnect: {r['new_streams_per_s']:,} new streams/s "
        f"({r['bound_by']} bound), all live after "
        f"{r['seconds_until_all_live']} s, gateway {r['gateway_cores_during']} cores meanwhile",
        f"            postgres {r['pg_lookups']:,} lookups ({r['pg_lookups_per_s']:,}/s, "
        f"{r['pg_cores_during']} cores)",
        f"            {_replay_line(r)}",
    ]
    return "\n".join(lines)


def _replay_line(r: dict) -> str:
    if not r["history_reads"]:
        return "no durable history (plain PUBLISH): reconnecting streams get event: resync"
    redis = r["replay_redis_cpu_s"]
    return (f"{r['history_reads']:,} history reads replaying {r['replayed_events']:,} events "
            f"(gateway {r['replay_gateway_cpu_s']} CPU-s, Redis "
            f"{redis if redis is not None else 'not measured'} CPU-s)")
