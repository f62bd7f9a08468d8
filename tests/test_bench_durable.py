"""``make bench``'s durable benchmarks, run small so they cannot rot unnoticed:
the reconnect storm (``bench.storm``) and HTTP publish (``bench.publish_http``).
Speed is measured by ``make bench``; these assert only what a run must show."""

from __future__ import annotations

import argparse

from bench import publish_http, storm


def test_a_small_reconnect_storm_replays_every_stream_exactly() -> None:
    result = storm.run_storm(argparse.Namespace(
        streams=200, merchants=20, missed=5, workers=1, query_timeout=0))
    assert "error" not in result, result
    assert result["replayed_streams"] == result["live_streams"] == 200, result
    assert result["resyncs"] == 0 and result["out_of_order"] == 0, result
    # about one history read per merchant (one each here; a little slack for a slow
    # machine): its other tabs replay from the backfilled ring, not one read per tab
    assert 20 <= result["history_reads_redis"] <= 24, result
    assert "OK:" in storm.report(result)


def test_http_publish_lands_in_redis_for_gateway_and_nchan() -> None:
    args = argparse.Namespace(duration=0.5, conns=2, depth=4, batch=10, merchants=50)
    rows = {row["system"]: row for row in publish_http.run(args)}
    assert all("error" not in row for row in rows.values()), rows
    for row in rows.values():
        assert row["events"] > 0 and row["refused"] == 0, row
        assert row["script_runs"] >= row["events"], row  # recorded in Redis, not only answered
    arrays = rows["gateway1 POST /publish, arrays"]
    assert arrays["per_request"] == 10 and arrays["events"] % 10 == 0, arrays
    assert "x events/s" in publish_http.report(list(rows.values()), args)
