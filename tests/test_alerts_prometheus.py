"""Alert rules and the Grafana dashboard against promtool and a real Prometheus.

- promtool checks config/prometheus/{prometheus.yml,alerts.yml} and runs the
  rules' unit tests (config/prometheus/alerts_test.yml); every alert is
  unit-tested and has a runbook section in docs/operations.md.
- A real Prometheus (Debian's, on a free loopback port) scrapes a real gateway
  every second, loading the SHIPPED prometheus.yml and alerts.yml. Only two
  kinds of text substitution are made: the scrape/evaluation intervals and
  the target address in prometheus.yml, and every rule's `for:` shortened to
  a few seconds (the shipped minutes would make each test wait minutes; the
  expressions, labels and annotations stay as shipped). Redis and PostgreSQL
  are killed and restarted: their alerts fire, then resolve.
- Every expression of config/grafana/gateway.json evaluates without error
  and returns a series after some traffic.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import http_json, open_stream, publish, wait_until

from tools.services import PrometheusServer

REPO_ROOT = Path(__file__).resolve().parent.parent
PROM_DIR = REPO_ROOT / "config" / "prometheus"
RULES = PROM_DIR / "alerts.yml"
RULE_TESTS = PROM_DIR / "alerts_test.yml"
PROM_CONFIG = PROM_DIR / "prometheus.yml"
DASHBOARD = REPO_ROOT / "config" / "grafana" / "gateway.json"
OPERATIONS = REPO_ROOT / "docs" / "operations.md"
TEST_FOR = "3s"  # every rule's `for:` in the live tests (see the module docstring)
ALERTS = {
    "GatewayDown",
    "GatewayRedisUnavailable",
    "GatewayPostgresUnavailable",
    "GatewayDeliveryCanaryFailing",
    "GatewayDeliveryLatencyHigh",
    "GatewaySlowClientCutsRising",
    "GatewayUnavailableRefusalsRising",
    "GatewayConnectionsNearCap",
    "GatewayReconnectStorm",
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], cwd=PROM_DIR, capture_output=True, text=True, timeout=60
    )


def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    return [r for g in data["groups"] for r in g["rules"] if "alert" in r]


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file."""
    anchors = set()
    for line in markdown.splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*$", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors


def test_promtool_checks_config_rules_and_unit_tests() -> None:
    for args in (("check", "config", "prometheus.yml"), ("check", "rules", "alerts.yml")):
        out = promtool(*args)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "SUCCESS" in out.stdout + out.stderr
    out = promtool("test", "rules", "alerts_test.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_every_alert_is_unit_tested_and_has_a_runbook() -> None:
    alerts = rules()
    assert {r["alert"] for r in alerts} == ALERTS
    anchors = github_anchors(OPERATIONS.read_text())
    for r in alerts:
        assert re.fullmatch(r"\d+[smh]", r.get("for", "")), r["alert"]
        assert r["annotations"]["summary"], r["alert"]
        page, _, anchor = r["annotations"]["runbook"].partition("#")
        assert page == "docs/operations.md", r["alert"]
        assert anchor in anchors, f"{r['alert']}: no heading for #{anchor} in docs/operations.md"
    # each alert has a unit test in which it fires
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for t in tests
        for case in t.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert fired == ALERTS


# ---------------------------------------------------------------------------
# a live Prometheus
# ---------------------------------------------------------------------------


def fast_rules(text: str) -> str:
    """The shipped rules with every `for:` shortened to TEST_FOR."""
    out, n = re.subn(r"(?m)^(\s+for:) \d+[smh]$", rf"\1 {TEST_FOR}", text)
    assert n == len(ALERTS)
    return out


def prometheus_config(targets: list[str]) -> str:
    """The shipped prometheus.yml: 1 s intervals and the given targets."""
    text = PROM_CONFIG.read_text()
    for old, new in (
        ("scrape_interval: 15s", "scrape_interval: 1s"),
        ("evaluation_interval: 15s", "evaluation_interval: 1s"),
        ('targets: ["127.0.0.1:8080"]', f"targets: {json.dumps(targets)}"),
    ):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


@pytest.fixture
def prometheus_factory() -> Iterator[Callable[[list[str]], PrometheusServer]]:
    """``make(targets) -> PrometheusServer`` with the shipped config and rules."""
    made: list[PrometheusServer] = []

    def make(targets: list[str]) -> PrometheusServer:
        prom = PrometheusServer(
            prometheus_config(targets), rule_files={"alerts.yml": fast_rules(RULES.read_text())}
        )
        made.append(prom)
        return prom.start()

    yield make
    for prom in made:
        prom.stop()


def alert_state(prom: PrometheusServer, name: str) -> str | None:
    """'pending', 'firing' or None (inactive) for an alert of the job."""
    states = [a["state"] for a in prom.alerts() if a["labels"]["alertname"] == name]
    return states[0] if states else None


def scraped(prom: PrometheusServer, expr: str) -> float | None:
    result = prom.query(expr)
    return float(result[0]["value"][1]) if result else None


def outage(
    prom: PrometheusServer,
    alert: str,
    kill: Callable[[], None],
    revive: Callable[[], None],
    up_metric: str,
) -> dict[str, float]:
    """Kill a dependency, wait for ``alert`` to fire, revive it, wait for it to clear."""
    # Prometheus discovers static targets within ~5 s of starting
    wait_until(lambda: scraped(prom, up_metric) == 1, timeout=20, message=f"({up_metric} == 1)")
    assert alert_state(prom, alert) is None
    t0 = time.monotonic()
    kill()
    wait_until(
        lambda: alert_state(prom, alert) == "firing", timeout=3 + 15, message=f"({alert} firing)"
    )
    fired = time.monotonic() - t0
    assert scraped(prom, up_metric) == 0
    t1 = time.monotonic()
    revive()
    wait_until(lambda: alert_state(prom, alert) is None, timeout=25, message=f"({alert} resolved)")
    return {"fired_after_s": fired, "resolved_after_s": time.monotonic() - t1}


@pytest.fixture
def watched(gateway_factory, redis_factory, postgres_factory, prometheus_factory) -> tuple:
    """(Redis, PostgreSQL, a gateway on them, Prometheus scraping it with the alert rules)."""
    redis, pg = redis_factory(), postgres_factory()
    gw = gateway_factory.start(redis=redis, postgres=pg)
    return redis, pg, gw, prometheus_factory([f"127.0.0.1:{gw.port}"])


def test_redis_outage_fires_and_resolves_its_alert(watched: tuple) -> None:
    redis, _, gw, prom = watched
    times = outage(prom, "GatewayRedisUnavailable", redis.kill, redis.restart,
                   'gateway_redis_up{job="event-gateway"}')
    print(f"redis outage: {times}")
    # the canary alert stays quiet while Redis itself is the cause; PostgreSQL is fine
    firing = {a["labels"]["alertname"] for a in prom.alerts() if a["state"] == "firing"}
    assert not firing & {"GatewayDeliveryCanaryFailing", "GatewayPostgresUnavailable"}, firing
    assert gw.returncode is None


def test_postgres_outage_fires_and_resolves_its_alert(watched: tuple) -> None:
    _, pg, gw, prom = watched
    times = outage(prom, "GatewayPostgresUnavailable", pg.kill, pg.restart,
                   'gateway_postgres_up{job="event-gateway"}')
    print(f"postgres outage: {times}")
    assert alert_state(prom, "GatewayRedisUnavailable") is None
    assert gw.returncode is None


# ---------------------------------------------------------------------------
# the dashboard
# ---------------------------------------------------------------------------


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of the dashboard and its variables."""
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((\w+), *\w+\)", var["query"]["query"])
            assert m, var
            out.append((f"${var['name']}", m.group(1)))
    return out


def datasource_refs(node: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    """(where, value) of every "datasource" key anywhere in the dashboard JSON."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield where, value
            yield from datasource_refs(value, f"{where}/{node.get('title', key)}")
    elif isinstance(node, list):
        for item in node:
            yield from datasource_refs(item, where)


def test_dashboard_asks_for_its_data_source_on_import_and_uses_every_metric() -> None:
    """Exported-for-sharing form: Grafana's import dialog asks for DS_PROMETHEUS
    (the `__inputs`) and puts the chosen uid wherever `${DS_PROMETHEUS}` stands:
    every panel, every query and the instance variable use it, nothing else."""
    dash = json.loads(DASHBOARD.read_text())
    [asked] = dash["__inputs"]
    assert {k: v for k, v in asked.items() if k != "description"} == {
        "name": "DS_PROMETHEUS", "label": "Prometheus",
        "type": "datasource", "pluginId": "prometheus", "pluginName": "Prometheus",
    }
    required = {(r["type"], r["id"]) for r in dash["__requires"]}
    assert {("grafana", "grafana"), ("datasource", "prometheus")} <= required
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert {("panel", p["type"]) for p in panels} <= required
    ds = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    for panel in panels:
        assert panel["datasource"] == ds, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == ds, panel["title"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["instance"]["datasource"] == ds
    refs = list(datasource_refs(dash))
    assert len(refs) == len(panels) + sum(len(p["targets"]) for p in panels) + 1
    assert all(value == ds for _, value in refs), [r for r in refs if r[1] != ds]
    # what the import does (a ${NAME} of __inputs replaced in every string): no
    # ${...} is left but Grafana's own $instance / $__rate_interval
    imported = DASHBOARD.read_text().replace("${DS_PROMETHEUS}", "prom-uid-1")
    assert "${" not in imported
    assert all(v == {"type": "prometheus", "uid": "prom-uid-1"}
               for _, v in datasource_refs(json.loads(imported)))
    text = " ".join(expr for _, expr in dashboard_exprs())
    for name in (
        "gateway_connections",
        "gateway_merchants_subscribed",
        "gateway_events_delivered_total",
        "gateway_delivery_latency_seconds_bucket",
        "gateway_refusals_total",
        "gateway_slow_client_disconnects_total",
        "gateway_redis_reconnects_total",
        "gateway_replay_hits_total",
        "gateway_replay_misses_total",
        "gateway_replayed_events_total",
        "gateway_redis_up",
        "gateway_postgres_up",
        "gateway_delivery_up",
        "gateway_stream_closes_total",
    ):
        assert name in text, name


def grafana_to_promql(expr: str) -> str:
    """Grafana's variables replaced as Grafana would for 'All' and a 1 s scrape."""
    promql = expr.replace("$instance", ".*").replace("$__rate_interval", "1m")
    assert "$" not in promql, f"a Grafana variable the test does not know: {expr}"
    return promql


async def test_every_dashboard_expression_returns_a_series(
    gateway_factory, redis_server, merchant, prometheus_factory
) -> None:
    mid, shop = merchant
    gw = await gateway_factory.astart()
    prom = await asyncio.to_thread(prometheus_factory, [f"127.0.0.1:{gw.port}"])

    # traffic: a stream gets events, leaves, comes back with Last-Event-ID
    # (replay from memory); a refusal; a stream stays open.
    async with open_stream(gw.stream_url(shop)) as s:
        await s.next_event_of("connected", timeout=5)
        for i in range(3):
            assert await publish(redis_server.url, f"merchant:{mid}:progress", {"jobId": i}) == 1
        first = await s.next_event_of("progress", timeout=5)
        await s.next_event_of("progress", timeout=5)
    async with open_stream(gw.stream_url(shop, lastEventId=first.id)) as s:
        assert s.status == 200
        assert (await s.next_event_of("progress", timeout=5)).json() == {"jobId": 1}
    status, _, _ = await http_json(gw.stream_url("not a shop"))
    assert status == 400
    async with open_stream(gw.stream_url(shop)) as s:
        await s.next_event_of("connected", timeout=5)
        exprs = [(title, grafana_to_promql(e)) for title, e in dashboard_exprs()]

        def missing() -> list[str]:
            return [f"{title}: {e}" for title, e in exprs if not prom.query(e)]

        last: list[str] = []

        def all_have_series() -> bool:
            nonlocal last
            last = missing()  # a PromQL error raises ServiceError: fails the test
            return not last

        try:
            await asyncio.to_thread(wait_until, all_have_series, 25, 0.5)
        except TimeoutError:
            raise AssertionError(f"dashboard queries without a series: {last}") from None
