"""The capacity model's prediction beside a measurement (``python -m bench --scale``)."""

from __future__ import annotations

from pathlib import Path

from bench.capacity import Target, holders, load_costs, predict, recheck_per_s, wakeups

__all__ = ["TOLERANCE_PCT", "compare", "print_validation", "within"]

# How far the model may miss a recorded scale run, in % of the measurement. Per-operation
# CPU moves by up to +-30 % between repeats on the 2 shared cores the records come from;
# the model is meant to be within half of that for CPU, and memory (PSS) is steadier.
TOLERANCE_PCT = {"cpu": 15.0, "mem": 10.0}


def compare(row: dict, costs: dict[str, float]) -> dict:
    """Predicted and measured gateway CPU (cores, over the window) and memory (MiB)."""
    w, n, m = row["workers"], row["streams"], row["merchants"]
    t = Target(n, m, row["rate"], churn_per_min=0.0)
    h = holders(w, t.tabs)
    window = row["window_s"]
    batches = row.get("batches") or row["published"]
    wake = wakeups(batches, row["published"] / max(batches, 1), h, w)
    work_us = (wake * costs.get("cpu_per_wakeup", 0.0)
               + row["published"] * h * costs["cpu_per_message"]
               + row["expected"] * costs["cpu_per_delivery"]
               + n / t.heartbeat_s * window * costs["cpu_per_delivery"]
               + recheck_per_s(t, h) * window * costs["cpu_per_merchant_open"])
    cpu = work_us / 1e6 / window + w * costs["cpu_idle_per_process"]
    mem = predict(costs, t, w)["mem_mib"]
    if w > 1:
        mem += costs.get("mem_supervisor", 0.0)
    meas_cpu = row["server_cpu_s"] / window
    meas_mem = row["server_mem_kb"] / 1024
    return {
        "system": row["system"], "streams": n, "merchants": m, "rate": row["rate"],
        "cpu_pred": round(cpu, 3), "cpu_meas": round(meas_cpu, 3),
        "cpu_err_pct": round(100 * (cpu - meas_cpu) / meas_cpu, 1) if meas_cpu else None,
        "mem_pred": round(mem, 1), "mem_meas": round(meas_mem, 1),
        "mem_err_pct": round(100 * (mem - meas_mem) / meas_mem, 1) if meas_mem else None,
        "holders_pred": round(h, 2),
        "holders_meas": round(row["gw_messages"] / row["published"], 2)
        if row.get("gw_messages") and row.get("published") else None,
    }


def within(c: dict) -> bool:
    """``compare``'s result meets ``TOLERANCE_PCT`` (CPU and memory)."""
    return (c["cpu_err_pct"] is not None and abs(c["cpu_err_pct"]) <= TOLERANCE_PCT["cpu"]
            and c["mem_err_pct"] is not None and abs(c["mem_err_pct"]) <= TOLERANCE_PCT["mem"])


def print_validation(rows: list[dict], costs_path: Path) -> list[dict]:
    """Print the comparison as a markdown table; returns its rows."""
    if not costs_path.exists():
        print(f"\n(no unit costs at {costs_path}: run python -m bench.unitcosts)")
        return []
    costs = load_costs(costs_path)
    out = [compare(r, costs) for r in rows if "error" not in r and r["system"].startswith("gate")]
    print(f"\ncapacity model ({costs_path.name}) against this run:")
    print("| system | streams | merchants | msg/s | CPU predicted | CPU measured | error "
          "| memory predicted | memory measured | error |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for c in out:
        print(f"| {c['system']} | {c['streams']:,} | {c['merchants']:,} | {c['rate']:g} "
              f"| {c['cpu_pred']:.2f} cores | {c['cpu_meas']:.2f} cores "
              f"| {c['cpu_err_pct']:+.0f} % | {c['mem_pred']:,.0f} MiB "
              f"| {c['mem_meas']:,.0f} MiB | {c['mem_err_pct']:+.0f} % |")
    return out
