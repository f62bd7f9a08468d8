"""PNG charts of one bench run (matplotlib, Agg backend; no display needed).

- ``p99.png``: p99 publish-to-receive latency against publish rate, per system
- ``cpu-per-delivery.png``: server CPU us per delivered event against rate
- ``memory.png``: server memory (PSS) against open streams, per system
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["write_charts"]


def _by_system(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        if "error" not in r:
            out.setdefault(r["system"], []).append(r)
    return out


def _model(rows: list[dict], costs: dict[str, float] | None) -> dict[str, list[dict]]:
    """The capacity model's prediction for each gateway row (empty without costs)."""
    if not costs:
        return {}
    from bench.validate import compare

    out: dict[str, list[dict]] = {}
    for r in rows:
        if "error" not in r and r["system"].startswith("gateway") and r.get("delivered"):
            c = compare(r, costs)
            out.setdefault(r["system"], []).append(
                {"rate": r["rate"], "us": c["cpu_pred"] * r["window_s"] * 1e6 / r["delivered"],
                 "mem0": r["server_mem0_kb"], "streams": r["streams"], "mem": c["mem_pred"]})
    return out


def write_charts(rows: list[dict], outdir: Path, prefix: str = "",
                 costs: dict[str, float] | None = None) -> list[Path]:
    """Write the three charts for ``rows`` into ``outdir``; returns their paths.

    With ``costs`` (unit costs), the capacity model's prediction for every
    gateway row is drawn dashed beside the measurement.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _by_system(rows)
    model = _model(rows, costs)
    if not groups:
        return []
    outdir.mkdir(parents=True, exist_ok=True)
    first = next(iter(groups.values()))[0]
    sub = f"N={first['streams']} streams, M={first['merchants']} merchants, loopback, 2 cores"
    paths = []
    for name, key, ylabel, title in (
        ("p99", "p99_ms", "p99 latency (ms)", "p99 publish-to-receive latency"),
        ("cpu-per-delivery", "us_per_event_server", "server CPU per delivery (µs)",
         "CPU per delivered event"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
        _plot_rates(ax, groups, key, model if name == "cpu-per-delivery" else {})
        ax.set_xlabel("published messages/s")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}\n{sub}", fontsize=10)
        if name == "p99":
            ax.set_yscale("log")
        paths.append(_save(plt, fig, ax, outdir / f"{prefix}{name}.png"))
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    _plot_memory(ax, groups, model)
    ax.set_xlabel("open streams")
    ax.set_ylabel("server memory, PSS (MiB)")
    ax.set_title(f"Memory against open streams\n{sub}", fontsize=10)
    paths.append(_save(plt, fig, ax, outdir / f"{prefix}memory.png"))
    return paths


def _plot_rates(ax: Any, groups: dict[str, list[dict]], key: str,
                model: dict[str, list[dict]]) -> None:
    """``key`` against the rate, one line per system (the model's dashed where given)."""
    for system, rs in groups.items():
        pts = sorted((r["rate"], r[key]) for r in rs if r.get(key) is not None)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=system)
        if system in model:
            pts = sorted((m["rate"], m["us"]) for m in model[system])
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "k--", marker="x",
                    label=f"{system}, capacity model")


def _plot_memory(ax: Any, groups: dict[str, list[dict]], model: dict[str, list[dict]]) -> None:
    """Memory against open streams, one line per system (the model's dashed)."""
    for system, rs in groups.items():
        curve = rs[0].get("mem_curve") or []
        if curve:
            ax.plot([c[0] for c in curve], [c[1] / 1024 for c in curve], marker="o", label=system)
        if system in model:
            m = model[system][0]
            ax.plot([0, m["streams"]], [m["mem0"] / 1024, m["mem"]], "k--", marker="x",
                    label=f"{system}, capacity model")


def _save(plt: Any, fig: Any, ax: Any, path: Path) -> Path:
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
