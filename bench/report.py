"""The printed result table and the pass/fail rule of ``--step``."""

from __future__ import annotations

__all__ = ["COLS", "costs_markdown", "ok", "table"]

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
    lines = [f"Measured {data.get('measured_at', '?')} with `{data.get('command', '?')}`.", "",
             "| cost | value | how it was measured |", "|---|---|---|"]
    for name, c in data["costs"].items():
        unit = "µs" if c["unit"] == "us" else c["unit"]
        lines.append(f"| `{name}` | {c['value']:g} {unit} | {c['how']} |")
    return "\n".join(lines)
