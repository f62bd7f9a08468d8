"""Pure tests of the bench arithmetic: histogram merge, capacity model, unit-cost solving."""

from __future__ import annotations

import json
import math
import random

import pytest

from bench import hist
from bench.capacity import Target, holders, load_costs, plan, predict, wakeups
from bench.pool import merge_results, split
from bench.streams import expected_count
from bench.unitcosts import mean_row, solve2
from bench.validate import compare

COSTS = {
    "cpu_per_delivery": 10.0,
    "cpu_per_message": 20.0,
    "cpu_per_stream_open": 300.0,
    "cpu_per_merchant_open": 200.0,
    "cpu_idle_per_process": 0.01,
    "mem_per_stream": 16.0,
    "mem_per_merchant": 2.0,
    "mem_per_process": 40.0,
    "mem_supervisor": 30.0,
    "redis_per_publish": 20.0,
    "redis_per_publish_pipelined": 2.0,
    "redis_per_subscriber": 0.5,
    "pg_per_lookup": 100.0,
    "frame_overhead": 53.0,
}


def _raw_quantile(samples: list[int], q: float) -> int:
    s = sorted(samples)
    return s[int((len(s) - 1) * q)]


def test_merged_histogram_percentile_is_over_all_samples_not_an_average() -> None:
    rng = random.Random(7)
    fast = [rng.randint(500_000, 1_500_000) for _ in range(9_000)]  # ~1 ms
    slow = [rng.randint(90_000_000, 110_000_000) for _ in range(1_000)]  # ~100 ms
    merged = hist.merge([json.loads(json.dumps(hist.from_samples(fast))),
                         json.loads(json.dumps(hist.from_samples(slow)))])
    assert sum(merged.values()) == 10_000
    truth = _raw_quantile(fast + slow, 0.99)
    p99 = hist.quantile(merged, 0.99)
    assert p99 is not None and truth <= p99 <= truth * (1 + 2 * hist.EPS)
    per_process_avg = (_raw_quantile(fast, 0.99) + _raw_quantile(slow, 0.99)) / 2
    assert abs(per_process_avg - truth) > 0.3 * truth  # what the merge must not do
    p50 = hist.quantile(merged, 0.5)
    assert p50 is not None and abs(p50 - _raw_quantile(fast + slow, 0.5)) < 0.03 * p50


def test_histogram_edges_and_cap() -> None:
    assert hist.quantile({}, 0.5) is None
    h = hist.from_samples([0, 10, 2_000_000])
    assert hist.quantile(h, 0.0) == pytest.approx(hist.upper(0))
    assert hist.quantile(h, 1.0, max_ns=2_000_000) == 2_000_000
    assert hist.summary(h, 2_000_000)["samples"] == 3


def test_merge_results_sums_counts_and_reads_percentiles_from_merged_counts() -> None:
    pub = {"phase": "published", "first": 0, "published": 10, "publish_s": 1.0,
           "publish_start_ns": 0}
    res = [{"expected": 5, "delivered": 5, "closed_during": 0, "parse_errors": 0,
            "open_status": {"200": 2}, "wall_s": 2.0, "client_cpu_s": 0.5,
            "last_recv_ns": 1_500_000_000, "hist": hist.from_samples([ms * 1_000_000] * 5),
            "max_ns": ms * 1_000_000} for ms in (1, 100)]
    out = merge_results(pub, res)
    assert (out["delivered"], out["expected"], out["open_status"]) == (10, 10, {"200": 4})
    assert out["client_cpu_pct"] == 50.0 and out["delivered_per_s"] == pytest.approx(6.7, 0.01)
    assert out["max_ms"] == 100.0 and out["p99_ms"] == 100.0 and out["p50_ms"] <= 1.02


def test_split_and_expected_count() -> None:
    assert split(10, 3) == [4, 3, 3] and sum(split(50_000, 4)) == 50_000
    per = [2, 0, 1]  # streams this process holds on merchants m0, m1, m2
    brute = sum(per[k % 3] for k in range(5, 5 + 11))
    assert expected_count(per, 5, 11) == brute
    assert expected_count(per, 0, 0) == 0 and expected_count([], 0, 5) == 0


def test_solve2_recovers_costs() -> None:
    x, y = solve2(1000, 1000, 1000 * 30, 100, 5000, 100 * 20 + 5000 * 10)
    assert (x, y) == (pytest.approx(20), pytest.approx(10))
    with pytest.raises(ValueError):
        solve2(1, 2, 3, 2, 4, 6)
    assert mean_row([{"a": 1, "s": "x"}, {"a": 3, "s": "y"}]) == {"a": 2, "s": "x"}


def test_holders() -> None:
    assert holders(1, 5) == 1.0
    assert holders(3, 1) == pytest.approx(1.0)
    assert holders(3, 50) == pytest.approx(3.0, abs=1e-6)
    assert holders(2, 2) == pytest.approx(1.5)


def test_wakeups() -> None:
    assert wakeups(100, 1, 1.0, 1) == 100  # one process, one message per burst
    assert wakeups(10, 10, 3.0, 3) == pytest.approx(30)  # every process holds every merchant
    assert wakeups(100, 1, 1.0, 4) == pytest.approx(100)  # unbatched: one wakeup per holder
    assert wakeups(0, 1, 1.0, 4) == 0.0


def test_predict_arithmetic() -> None:
    t = Target(streams=3000, merchants=300, rate=100, churn_per_min=0)
    p = predict(COSTS, t, 1)
    # 100 msg/s x (1 holder x 20 + 10 tabs x 10) + 3000/15 pings x 10 + 0.01 core idle
    # + 300 merchants re-verified per 60 s x 200 us
    assert p["cpu_cores"] == pytest.approx((100 * 120 + 200 * 10 + 5 * 200) / 1e6 + 0.01)
    woken = predict(dict(COSTS, cpu_per_wakeup=100.0), t, 1)["cpu_cores"]
    assert woken == pytest.approx(p["cpu_cores"] + 100 * 100 / 1e6)  # one wakeup per message
    assert p["mem_mib"] == pytest.approx((3000 * 16 + 300 * 2 + 40 * 1024) / 1024)


def test_plan_connections_then_cpu() -> None:
    small = plan(COSTS, Target(streams=10_000, merchants=5_000, rate=1_000))
    assert small.processes == 1 and small.limited_by.startswith("connections")
    assert small.deliveries_per_s == 2_000
    assert small.redis_primaries == 1
    busy = plan(COSTS, Target(streams=10_000, merchants=100, rate=50_000))
    assert busy.limited_by == "gateway CPU"
    # 50k msg/s x 100 tabs x 10 us = 50 cores of deliveries alone, at 0.6 core each
    assert busy.processes >= math.ceil(50 / 0.6)
    assert busy.gateway_cores <= busy.processes * 0.6 + 1e-9
    assert busy.redis_primaries == math.ceil(busy.redis_cores / 0.5)
    assert busy.redis_limited_by == "CPU"
    fat = plan(COSTS, Target(streams=10_000, merchants=5_000, rate=20_000, payload=100_000))
    mbit = 20_000 * holders(fat.processes, 2) * (100_000 + 64) * 8 / 1e6  # to every holder
    assert fat.redis_limited_by == "network" and fat.redis_primaries == math.ceil(mbit / 5000)


def test_restart_is_admission_bound_and_counts_lookups() -> None:
    t = Target(streams=100_000, merchants=50_000, rate=10_000)
    f = plan(COSTS, t)
    r = f.restart
    lookups = 50_000 * holders(f.processes, 2)
    assert r["bound_by"] == "admission limit"  # a token per PostgreSQL lookup, not per stream
    assert r["pg_lookups"] == round(lookups)
    assert r["seconds_until_all_live"] == pytest.approx(lookups / (f.processes * 500) + 3, 0.01)
    assert r["new_streams_per_s"] == pytest.approx(100_000 / (lookups / (f.processes * 500)), 0.01)
    assert r["history_reads"] == 0 and r["replayed_events"] == 0  # plain PUBLISH: no history
    costs = dict(COSTS, redis_per_durable_publish=40.0, redis_per_replayed_event=1.0,
                 gateway_per_replayed_event=8.0)
    d = plan(costs, Target(streams=100_000, merchants=50_000, rate=10_000, durable=True)).restart
    missed = 10_000 / 50_000 * ((d["seconds_until_all_live"] - 3) / 2 + 3)
    assert d["history_reads"] == round(lookups)  # one per merchant per process holding it
    assert d["replayed_events"] == pytest.approx(100_000 * missed, rel=0.01)
    # each read returns the whole history (sse.history = 100 events), 1 us each
    assert d["replay_redis_cpu_s"] == pytest.approx(lookups * 100 / 1e6, abs=0.01)


def test_load_costs_and_compare(tmp_path) -> None:
    path = tmp_path / "costs.json"
    path.write_text(json.dumps({"costs": {k: {"value": v, "unit": "", "how": ""}
                                          for k, v in COSTS.items()}}))
    costs = load_costs(path)
    assert costs == COSTS
    row = {"system": "gateway3", "workers": 3, "streams": 3000, "merchants": 300, "rate": 100,
           "window_s": 10.0, "published": 1000, "expected": 10_000, "server_cpu_s": 0.2,
           "server_mem_kb": 200 * 1024, "gw_messages": 3000}
    c = compare(row, costs)
    h = holders(3, 10)
    want = (1000 * h * 20 + 10_000 * 10 + 200 * 10 * 10 + 300 * h / 60 * 10 * 200) / 1e6 / 10
    want += 0.03
    assert c["cpu_pred"] == pytest.approx(want, abs=1e-3)
    assert c["cpu_meas"] == 0.02 and c["holders_meas"] == 3.0
    assert c["mem_pred"] == pytest.approx((3000 * 16 + 300 * h * 2 + 120 * 1024) / 1024 + 30, 0.01)


def test_cli_reads_the_costs_file(tmp_path, capsys) -> None:
    from bench.capacity import main

    path = tmp_path / "costs.json"
    path.write_text(json.dumps({"costs": {k: {"value": v, "unit": "", "how": ""}
                                          for k, v in COSTS.items()}}))
    assert main(["--streams", "40000", "--tabs", "4", "--rate", "100", "--json",
                 "--costs", str(path)]) == 0
    fleet = json.loads(capsys.readouterr().out)
    assert fleet["processes"] == 3  # 40,000 / (20,000 x 0.8), CPU far below
    assert fleet["deliveries_per_s"] == 400
    lookups = 10_000 * holders(3, 4)  # one per merchant per process holding it
    assert fleet["restart"]["pg_lookups"] == round(lookups)
    assert fleet["restart"]["bound_by"] == "admission limit"  # 1,500 lookups/s over 3 processes
    assert fleet["restart"]["seconds_until_all_live"] == pytest.approx(lookups / 1500 + 3, 0.01)


CLUSTER_COSTS = dict(COSTS, redis_per_cluster_publish=40.0, redis_per_cluster_publish_pipelined=4.0,
                     redis_replica_per_cluster_publish=5.0)


def test_redis_sizing_uses_the_cluster_cost_only_past_one_primary() -> None:
    from bench.capacity import redis_publish_us

    small = Target(streams=10_000, merchants=5_000, rate=1_000)
    f = plan(CLUSTER_COSTS, small)  # 1,000 x ~20 us: one primary, the single-Redis cost
    assert f.redis_primaries == 1 and f.redis_cost == "redis_per_publish 20 us/msg"
    assert f.redis_replica_cores is None
    big = Target(streams=10_000, merchants=5_000, rate=100_000)
    single = plan(COSTS, big)  # no cluster cost in the file: the single-Redis cost, said so
    assert single.redis_cost.startswith("redis_per_publish 20 us/msg (the file has no cluster")
    cluster = plan(CLUSTER_COSTS, big)
    h = cluster.holders_per_merchant
    cores = 100_000 * (40.0 + (holders(cluster.processes, 2) - 1) * 0.5) / 1e6
    assert cluster.redis_cores == pytest.approx(cores, abs=1e-3) and 1 < h <= 2
    assert cluster.redis_primaries == math.ceil(cores / 0.5) > single.redis_primaries
    assert cluster.redis_cost == "redis_per_cluster_publish 40 us/msg"
    assert cluster.redis_replica_cores == pytest.approx(0.5)  # 100,000/s x 5 us
    piped = Target(streams=10_000, merchants=5_000, rate=300_000, pipelined=True)
    assert plan(CLUSTER_COSTS, piped).redis_cost.startswith("redis_per_cluster_publish_pipelined")
    assert redis_publish_us(CLUSTER_COSTS, big, cluster=True) == (40.0, "redis_per_cluster_publish")
    durable = Target(streams=10_000, merchants=5_000, rate=100_000, durable=True)
    with pytest.raises(KeyError):
        plan(CLUSTER_COSTS, durable)  # no durable cost at all: refused, not guessed
    # a cluster cheaper per message than one Redis still has two primaries
    cheap = dict(CLUSTER_COSTS, redis_per_cluster_publish=1.0)
    assert plan(cheap, Target(streams=10_000, merchants=5_000, rate=30_000)).redis_primaries == 2


def test_cli_prints_the_redis_cost_it_used(tmp_path, capsys) -> None:
    from bench.capacity import main

    path = tmp_path / "costs.json"
    path.write_text(json.dumps({"costs": {k: {"value": v, "unit": "us", "how": ""}
                                          for k, v in CLUSTER_COSTS.items()}}))
    assert main(["--streams", "10000", "--rate", "100000", "--costs", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Redis CPU per message: redis_per_cluster_publish 40 us/msg" in out
    assert "replicas (one per primary) 0.5 cores in total" in out
