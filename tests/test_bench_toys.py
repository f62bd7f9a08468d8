"""The bench entry points no other test runs, end to end at toy size, and their exit
status: ``python -m bench.unitcosts`` (``make bench MODE=units``, the unit costs the
capacity model is built on) and ``python -m bench.slow_client``.

Real runs (their own PostgreSQL, Redis and gateway processes) with a few hundred
streams for a second or two: speed is ``make bench``'s to measure; these assert
that each path runs to the end, writes what it promises and exits by its report."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench import records
from bench.slow_client import passed

ROOT = Path(__file__).resolve().parent.parent


def _run(module: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(150)
def test_a_toy_unit_cost_run_solves_every_cost(tmp_path: Path) -> None:
    out = tmp_path / "unit-costs.json"
    proc = _run("bench.unitcosts", "--streams", "200", "--fanout", "10", "--rate-a", "2000",
                "--rate-b", "100", "--rate-c", "150", "--duration", "1", "--idle", "0.5",
                "--repeat", "1", "--no-redis-cluster", "--redis-scale", "0.01",
                "--out", str(out), timeout=140)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    costs = result["costs"]
    for name in ("cpu_per_wakeup", "cpu_per_message", "cpu_per_delivery",
                 "cpu_per_stream_open", "mem_per_stream", "redis_per_publish_pipelined"):
        assert math.isfinite(costs[name]["value"]), (name, costs[name])
    assert len(result["trials"]) == 3 and result["commit"], result["trials"]
    assert result["command"].startswith("python -m bench.unitcosts "), result["command"]


@pytest.mark.timeout(60)
def test_a_toy_slow_client_run_records_and_exits_by_its_report(tmp_path: Path) -> None:
    record = tmp_path / "slow_client.jsonl"
    proc = _run("bench.slow_client", "--events", "100", "--fast", "2", "--slow",
                "--record", str(record), timeout=50)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK: every fast stream got every event" in proc.stdout, proc.stdout
    (row,) = records.read(record)
    assert row["bench"] == "slow_client" and row["received"] == 200 and row["slow"], row


def test_a_slow_client_report_that_lost_events_is_a_failed_run() -> None:
    assert passed({"fast": 2, "events": 100, "received": 200})
    assert not passed({"fast": 2, "events": 100, "received": 199})
