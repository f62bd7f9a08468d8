"""``python -m bench.unitcosts`` (``make bench MODE=units``) end to end at toy size:
trials A, B and C once each (40 streams, half a second of publishing), the idle
``gateway2``, the Redis micro-benchmark at 1 % of its counts (the Redis Cluster
part is run small by tests/test_bench_cluster.py), and the unit-costs file the
capacity model reads. The figures at this size are noise: only that every cost is
derived and written is asserted. A failed trial exits 1 (``run_trials``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.capacity import load_costs

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(150)
def test_a_toy_unit_costs_run_writes_every_cost_the_model_reads(tmp_path) -> None:
    out = tmp_path / "unit-costs.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.unitcosts", "--streams", "40", "--fanout", "10",
         "--rate-a", "2000", "--rate-b", "50", "--rate-c", "50", "--duration", "0.5",
         "--idle", "0.2", "--repeat", "1", "--redis-scale", "0.01", "--no-redis-cluster",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=140)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert [(t["merchants"], t["rate"]) for t in data["trials"]] == [
        (40, 2000.0), (4, 50.0), (40, 50.0)], data["trials"]
    assert all(t["delivered"] == t["expected"] > 0 for t in data["trials"]), data["trials"]
    costs = data["costs"]
    for name in ("cpu_per_delivery", "cpu_per_message", "cpu_per_wakeup", "cpu_per_stream_open",
                 "cpu_per_merchant_open", "mem_per_stream", "mem_per_merchant", "mem_per_process",
                 "redis_per_publish", "redis_per_durable_publish", "mem_supervisor",
                 "cpu_idle_per_process"):
        assert isinstance(costs[name]["value"], int | float) and costs[name]["how"], name
    assert data["redis"]["cluster"] == {"skipped": "not asked for"}, data["redis"]
    assert data["params"]["redis_scale"] == 0.01 and data["commit"], data["params"]
    assert set(load_costs(out)) >= {"cpu_per_delivery", "mem_per_stream"}
    assert not (ROOT / "docs" / "bench" / "unit-costs.json").samefile(out)
