"""``python -m bench`` (``make bench``, compare) and ``python -m bench --scale``
(``make bench MODE=scale``) end to end at toy size, and their exit status: a run
whose report fails a bound (a trial's error; with ``--scale`` the capacity model
outside its tolerance) exits 1.

Each run is a real one (its own PostgreSQL, Redis and gateway processes, load
client processes) with a few dozen streams for a second: speed is ``make bench``'s
to measure; these assert only that the path runs, records and charts, and that its
exit status says what its report says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import records
from bench.__main__ import failures
from bench.capacity import load_costs
from bench.validate import compare, within

ROOT = Path(__file__).resolve().parent.parent
COSTS = ROOT / "docs" / "bench" / "unit-costs.json"


def _bench(*args: str, timeout: float = 100) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.timeout(180)
def test_a_toy_compare_run_records_charts_and_exits_0(tmp_path) -> None:
    """Plain, durable through the helper and durable through the HTTP API, side by side."""
    record, out = tmp_path / "compare.jsonl", tmp_path / "latest.jsonl"
    systems = ("gateway1", "gateway1-durable", "gateway1-durable-http")
    proc = _bench("--systems", ",".join(systems), "--streams", "40", "--merchants", "4",
                  "--rates", "100", "--duration", "1", "--drain", "2", "--json", str(out),
                  "--record", str(record), "--charts", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {r["system"]: r for r in _rows(out)}
    assert set(rows) == set(systems), rows
    for row in rows.values():
        assert row["delivered"] == row["expected"] > 0, row
    http = rows["gateway1-durable-http"]
    assert http["publish_responses"] > 0 and http["publish_bad"] == 0, http  # every POST 200
    recs = records.read(record)
    assert {r["system"] for r in recs} == set(systems), recs
    rec = recs[0]
    assert rec["bench"] == "compare" and rec["params"]["streams"] == 40, rec
    assert rec["commit"] and rec["command"].startswith("python -m bench "), rec
    assert "gateway1" in proc.stdout and "us/ev(srv)" in proc.stdout, proc.stdout
    for kind in ("durable", "durable-http"):
        assert f"{kind}/plain CPU per delivery at R=100: server " in proc.stdout, proc.stdout
    assert list(tmp_path.glob("*.png")), "no chart written"


@pytest.mark.timeout(120)
def test_a_toy_scale_run_sets_the_model_beside_it_and_exits_by_its_tolerance(tmp_path) -> None:
    out = tmp_path / "scale.jsonl"
    proc = _bench("--scale", "--streams", "60", "--merchants", "6", "--procs", "2",
                  "--rates", "100", "--duration", "1", "--drain", "2", "--json", str(out),
                  "--charts", "", "--costs", str(COSTS))
    rows = _rows(out)
    assert [(r["system"], r["workers"]) for r in rows] == [("gateway3", 3)], rows
    assert "error" not in rows[0] and rows[0]["delivered"] == rows[0]["expected"] > 0, rows
    assert "capacity model (unit-costs.json) against this run:" in proc.stdout, proc.stdout
    # at 60 streams the model may well miss by more than its tolerance: the exit status
    # must say whichever it was
    checked = [compare(r, load_costs(COSTS)) for r in rows]
    assert proc.returncode == (0 if all(within(c) for c in checked) else 1), \
        (proc.returncode, checked, proc.stderr[-2000:])
    if proc.returncode:
        assert "FAILED: capacity model vs gateway3" in proc.stderr, proc.stderr


def test_a_report_that_fails_a_bound_is_a_failed_run() -> None:
    good = {"system": "gateway1", "rate": 500.0, "delivered": 10, "expected": 10}
    assert failures([good], []) == []
    bad = failures([good, {"system": "nchan-redis", "rate": 500.0, "error": "boom"}], [])
    assert bad == ["nchan-redis R=500: boom"]
    near = {"system": "gateway3", "rate": 1000.0, "cpu_err_pct": -14.0, "mem_err_pct": 9.0}
    far = dict(near, cpu_err_pct=-28.0)
    assert failures([good], [near]) == []
    (problem,) = failures([good], [near, far])
    assert problem.startswith("capacity model vs gateway3 at 1000 msg/s: CPU -28.0 %"), problem
