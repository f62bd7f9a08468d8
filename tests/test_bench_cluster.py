"""``python -m bench.cluster``'s parsing and tables, and the Redis Cluster unit costs
(``bench.redis_cluster_costs``): pure tests, and one small run on a local cluster."""

from __future__ import annotations

from bench.cluster_report import cmdstat, kv_info, stats_delta, tables

RAW_COMMANDSTATS = (
    "# Commandstats\r\n"
    "cmdstat_spublish:calls=1260,usec=16423,usec_per_call=13.03,rejected_calls=0,failed_calls=0\r\n"
    "cmdstat_publish:calls=7,usec=29,usec_per_call=4.14,rejected_calls=0,failed_calls=0\r\n"
)
CLUSTER_INFO = (
    "cluster_state:ok\r\ncluster_size:3\r\n"
    "cluster_stats_messages_publish_received:4000\r\n"
    "cluster_stats_messages_publishshard_sent:1260\r\n"
)


def test_cmdstat_reads_raw_text_and_redis_py_dicts() -> None:
    assert cmdstat(RAW_COMMANDSTATS, "SPUBLISH") == (1260, 16423)
    assert cmdstat(RAW_COMMANDSTATS, "publish") == (7, 29)
    assert cmdstat(RAW_COMMANDSTATS, "ssubscribe") == (0, 0)
    parsed = {"cmdstat_spublish": {"calls": 12, "usec": 40, "usec_per_call": 3.33}}
    assert cmdstat(parsed, "spublish") == (12, 40)
    assert cmdstat(parsed, "publish") == (0, 0)


def test_kv_info_keeps_integer_fields_only() -> None:
    info = kv_info(CLUSTER_INFO)
    assert info["cluster_stats_messages_publish_received"] == 4000
    assert info["cluster_size"] == 3
    assert "cluster_state" not in info


def _node(role: str, of: int | None, spub: int, pub: int, bus: dict[str, int], cpu: float) -> dict:
    return {"role": role, "of": of, "slots": 5461 if role == "primary" else 0,
            "spublish": (spub, spub * 10), "publish": (pub, pub * 4), "bus": bus, "cpu_s": cpu}


def test_stats_delta_and_tables_show_the_split() -> None:
    before = {1: _node("primary", None, 0, 0, {}, 1.0), 2: _node("replica", 1, 0, 0, {}, 2.0)}
    after = {1: _node("primary", None, 30, 0, {"publishshard_sent": 30}, 1.2),
             2: _node("replica", 1, 0, 0, {"publishshard_received": 30}, 2.1)}
    delta = stats_delta(before, after)
    assert delta["1"]["spublish_calls"] == 30 and delta["1"]["spublish_usec"] == 300
    assert delta["2"]["bus_publishshard_received"] == 30
    assert delta["1"]["cpu_ms"] == 200.0
    trial = {"delivered": 10, "expected": 10, "p50_ms": 1.0, "p99_ms": 2.0,
             "gateway_cpu_pct": 5.0, "us_per_delivery": 20.0, "redis_us_per_delivery": 4.0}
    out = {"params": {"streams": 20, "merchants": 2, "rate": 5, "duration": 1},
           "cpus": 2, "loadavg_before": 0.5, "merchants_per_primary": {"1": 2},
           "spublish": {"k": 30, "nodes": delta, "sent_by_bench": {"1": 30}},
           "publish": {"k": 0, "sent_to": 1, "nodes": delta},
           "cpu": {"trials": [dict(trial, system="single"), dict(trial, system="cluster",
                                                                   us_per_delivery=23.0)],
                   "median_us_per_delivery": {"single": 20.0, "cluster": 23.0}, "ratio": 1.15}}
    text = tables(out)
    assert "replica of 1" in text and "100.0%" in text
    assert "cluster/single = 1.15 (OVER the 1.10 goal)" in text


def _raw(cluster_us: float = 30.0) -> dict:
    kinds = ("publish", "publish_pipelined", "durable", "durable_pipelined")
    return {"measured_at": "2026-11-30T15:00:00Z", "primaries": 3, "replicas": 3,
            "single": dict.fromkeys(kinds, 15.0), "cluster": dict.fromkeys(kinds, cluster_us),
            "cluster_replicas": dict.fromkeys(kinds, 3.0),
            "ratio": dict.fromkeys(kinds, round(cluster_us / 15.0, 2))}


def test_cluster_costs_are_merged_into_a_unit_costs_file_and_say_so(tmp_path) -> None:
    import json

    from bench.capacity import load_costs
    from bench.report import cluster_costs, cluster_table, costs_markdown, merge_cluster_costs

    costs = cluster_costs(_raw())
    assert costs["redis_per_cluster_publish"]["value"] == 30.0
    assert costs["redis_per_cluster_publish"]["how"].endswith("2.0x a single Redis in the same run")
    assert costs["redis_replica_per_cluster_durable_publish"]["value"] == 3.0
    path = tmp_path / "unit-costs.json"
    path.write_text(json.dumps({"measured_at": "then", "command": "python -m bench.unitcosts",
                                "costs": {"redis_per_publish": {"value": 15, "unit": "us",
                                                                "how": "single"}}}))
    for value in (25.0, 30.0):  # merged twice: the second replaces the first
        merge_cluster_costs(path, _raw(value), "python -m bench.redis_cluster_costs --merge X")
    data = json.loads(path.read_text())
    assert len(data["merged"]) == 1 and data["redis_cluster"]["cluster"]["publish"] == 30.0
    loaded = load_costs(path)
    assert loaded["redis_per_publish"] == 15 and loaded["redis_per_cluster_publish"] == 30.0
    md = costs_markdown(data)
    assert "Measured then with `python -m bench.unitcosts`." in md
    assert "with `python -m bench.redis_cluster_costs --merge X` and merged" in md
    assert "| `redis_per_cluster_durable_publish` | 30 µs |" in md
    assert "2.00" in cluster_table(_raw(), ("publish",))


def test_measure_cluster_small_run_delivers_every_message() -> None:
    from bench.redis_cluster_costs import KINDS, measure_cluster

    raw = measure_cluster(merchants=20, rounds=1, scale=0.01, idle_s=0.2)
    assert raw["all_delivered"] and (raw["primaries"], raw["replicas"]) == (3, 3)
    assert {t["target"] for t in raw["trials"]} == {"single", "cluster"}
    for t in raw["trials"]:
        assert t["delivered"] == t["messages"]
        if t["kind"].startswith("publish"):  # each (S)PUBLISH reached its one subscriber
            assert t["receivers"] == t["messages"]
    assert set(raw["cluster"]) == set(KINDS) and set(raw["ratio"]) == set(KINDS)


def test_a_cluster_report_over_its_goal_or_losing_events_is_a_failed_run() -> None:
    from bench.cluster_report import failures

    assert failures({"cpu": {"ratio": 1.05, "all_delivered": True}}) == []
    assert failures({"cpu": {"ratio": None, "all_delivered": True}}) == []
    assert failures({"cpu": {"ratio": 1.2, "all_delivered": True}}) == [
        "cluster/single = 1.2, OVER the 1.10 goal"]
    assert failures({"cpu": {"ratio": 1.0, "all_delivered": False}}) == [
        "NOT every event was delivered"]
