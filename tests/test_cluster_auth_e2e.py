"""A Redis Cluster with a password, end to end: failover, /health per primary, no leaks.

One 3-primary, 3-replica cluster for the module, every node started with
`--requirepass` and `--masterauth` (tools/cluster.py). The gateway is given
one node's URL with the credentials and carries them to every primary it
discovers, also to a replica promoted by a failover (README, "Redis
Cluster"). `/health` lists every primary under `redis.nodes` and fails the
one that is down; the password appears in no log line, `/health`, `/metrics`
or `check-config` output (README, "Redis").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster_support import (
    CONFIG,
    channel,
    connected,
    health_nodes,
    is_end,
    post,
    seed_spread,
    serving,
    session,
    spublish,
    spublish_to,
    subscribed,
    summary,
    until,
)
from ops_support import get_health, poll
from support import ISOLATED_ENV, open_stream, wait_for

from tools.cluster import RedisCluster
from tools.services import HOST

pytestmark = [
    pytest.mark.timeout(60),
]

PASSWORD = "cl-auth-s3cret-5e1f0b"
WRONG = "cl-wrong-pw-88c2d4"
REPO_ROOT = Path(__file__).resolve().parent.parent
AUTH_FAILURE = re.compile(r"AuthenticationError|WRONGPASS|invalid username-password", re.I)


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    """One 3-primary, 3-replica cluster with a password, stopped by PID at the end."""
    with RedisCluster(password=PASSWORD) as c:
        yield c


def assert_secret_free(texts: dict[str, str], *secrets: str) -> None:
    """No secret in any text; the message names where, never the text itself."""
    leaks = [where for where, text in texts.items() for s in secrets if s in text]
    assert not leaks, f"a password appears in: {leaks}"


def node_url(cluster: RedisCluster, userinfo: str) -> str:
    """A primary's URL with ``userinfo`` (":PASS" or "USER:PASS") and database 0."""
    return f"redis://{userinfo}@{HOST}:{cluster.primaries()[0].port}/0"


def check_config(tmp_path: Path, url: str) -> subprocess.CompletedProcess[str]:
    """`python -m gateway check-config` of a cluster config whose redis.url is ``url``."""
    env = {k: v for k, v in os.environ.items() if k not in ISOLATED_ENV}
    env["DATABASE_URL"] = "postgresql://gw@127.0.0.1:1/gw"
    path = tmp_path / "check.yaml"
    path.write_text(yaml.safe_dump({"redis": {"cluster": True, "url": url}}))
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "--config", str(path)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=30,
    )


async def test_primary_failover_resyncs_only_its_merchants(
    cluster: RedisCluster, postgres_server: Any, gateway_factory: Any
) -> None:
    seed = int(cluster.url.rsplit(":", 1)[1])
    victim = next(n.port for n in cluster.primaries() if n.port != seed)
    before = {n.port for n in cluster.primaries()}
    spread = seed_spread(cluster, postgres_server, 2, prefix="fo")
    hit = spread[victim]
    spared = [m for port, ms in spread.items() if port != victim for m in ms]
    # the URL has ":PASSWORD@" in it
    gw = await serving(await gateway_factory.astart(config=CONFIG, redis=cluster.url))
    sent: dict[str, list[int]] = {mid: [] for mid, _ in spared}
    stop = asyncio.Event()

    async def publisher() -> None:  # plain SPUBLISH to the survivors throughout
        owners = {mid: cluster.primary_for(channel(mid)).port for mid in sent}
        for seq in range(1, 2000):
            if stop.is_set():
                return
            for mid in sent:
                got = await spublish_to(owners[mid], channel(mid, "stage"), {"m": mid, "n": seq},
                                        cluster.password)
                assert got == 1, f"SPUBLISH to {mid} (seq {seq}) reached {got} subscribers"
                sent[mid].append(seq)
            await asyncio.sleep(0.02)

    def victim_failing(r: Any) -> bool:
        return r[0] == 503 and health_nodes(r[1]).get(victim) == "fail"

    async with session() as http, contextlib.AsyncExitStack() as stack:
        streams = {mid: await stack.enter_async_context(open_stream(gw.stream_url(shop),
                                                                    session=http))
                   for mid, shop in hit + spared}
        await asyncio.gather(*(connected(s) for s in streams.values()))
        await subscribed(cluster, list(streams), gw)
        (_, healthy, _), _ = await poll(lambda: get_health(gw), lambda r: r[0] == 200, 10,
                                        what="/health 200")
        assert health_nodes(healthy) == dict.fromkeys(before, "ok"), healthy
        task = asyncio.create_task(publisher())
        try:
            await wait_for(lambda: all(len(seqs) >= 5 for seqs in sent.values()), 10,
                           message="(the publisher under way before the kill)")
            await asyncio.to_thread(cluster.kill_primary, victim)
            (_, down, _), _ = await poll(lambda: get_health(gw), victim_failing, 10, 0.02,
                                         "/health 503 naming the killed primary")
            assert down["status"] == "fail", down
            assert health_nodes(down) == {p: "fail" if p == victim else "ok" for p in before}, (
                f"only the killed primary {victim} may fail: {down}")
            promoted = (await asyncio.to_thread(cluster.wait_failover, victim, 20)).port
            (_, up, _), _ = await poll(lambda: get_health(gw), lambda r: r[0] == 200, 20,
                                       what="/health 200 after the replica's promotion")
            assert health_nodes(up) == dict.fromkeys(before - {victim} | {promoted}, "ok"), up
            for mid, _ in hit:
                ev = await streams[mid].next_event(15)
                assert (ev.event, ev.json()) == ("resync", {"reason": "redis_reconnected"}), ev
            await subscribed(cluster, [m for m, _ in hit], gw)
            for mid, _ in hit:
                assert await spublish(cluster, channel(mid, "stage"), {"m": mid, "n": 0}) == 1
                assert summary([await streams[mid].next_event(5)]) == [("stage", mid)]
            published = {mid: len(seqs) for mid, seqs in sent.items()}
            await wait_for(lambda: all(len(sent[m]) >= n + 5 for m, n in published.items()), 10,
                           message="(the publisher still under way after the failover)")
        finally:
            stop.set()
            await task
            await asyncio.to_thread(cluster.restart, victim)
        for mid in sent:
            await spublish(cluster, channel(mid, "completion"), {"m": mid, "end": True})
            events = await until(streams[mid], is_end)
            assert not [e for e in events if e.event == "resync"], events
            assert [e.json()["n"] for e in events[:-1]] == sent[mid], (mid, events)
    assert_secret_free({"/health while healthy": json.dumps(healthy),
                        "/health with a primary down": json.dumps(down),
                        "/health after the failover": json.dumps(up),
                        "the gateway log": gw.log_text()}, PASSWORD)


async def test_a_user_and_password_reach_every_primary_and_stay_secret(
    cluster: RedisCluster, postgres_server: Any, gateway_factory: Any, tmp_path: Path
) -> None:
    spread = seed_spread(cluster, postgres_server, 1, prefix="pw")
    merchants = [m for ms in spread.values() for m in ms]
    url = node_url(cluster, f"default:{PASSWORD}")  # an ACL user, as for a single Redis
    gw = await gateway_factory.astart(config=CONFIG, redis=url)
    # ready, not only live: a stream opened before every primary's link is up is a 503
    await poll(lambda: get_health(gw), lambda r: r[0] == 200, 20, what="/health 200")
    async with session() as http, contextlib.AsyncExitStack() as stack:
        streams = {mid: await stack.enter_async_context(open_stream(gw.stream_url(shop),
                                                                    session=http))
                   for mid, shop in merchants}
        await asyncio.gather(*(connected(s) for s in streams.values()))
        await subscribed(cluster, list(streams), gw)
        for mid in streams:
            assert await spublish(cluster, channel(mid), {"m": mid}) == 1, mid
        reply = await post(gw, [{"merchantId": m, "event": "stage", "data": {"m": m}}
                                for m in streams])
        for (mid, s), durable_id in zip(streams.items(), reply["ids"], strict=True):
            events = await s.events(2, 10)
            assert summary(events) == [("progress", mid), ("stage", mid)], events
            assert events[1].id == durable_id, events
        status, health, _ = await get_health(gw)
        metrics_status, metrics, _ = await get_health(gw, "/metrics")
    assert status == 200, health
    assert health_nodes(health) == dict.fromkeys({n.port for n in cluster.primaries()}, "ok")
    assert metrics_status == 200 and "gateway_connections" in metrics
    checked = await asyncio.to_thread(check_config, tmp_path, url)
    assert checked.returncode == 0, checked.stderr
    printed = yaml.safe_load(checked.stdout)["redis"]
    assert printed["cluster"] is True and printed["url"].startswith("redis://default:***@"), (
        "check-config prints the URL with the user kept and the password masked")
    await asyncio.to_thread(gw.stop)  # the shutdown's lines too
    assert_secret_free({"the gateway log": gw.log_text(), "/health": json.dumps(health),
                        "/metrics": metrics, "check-config": checked.stdout + checked.stderr},
                       PASSWORD)


async def wrong_password_gateway(
    cluster: RedisCluster, gateway_factory: Any
) -> tuple[Any, dict[str, Any]]:
    """A gateway given a wrong password, once it has logged a warning about Redis;
    (gateway, its /health body, asserted 503 for Redis alone and free of passwords)."""
    gw = await gateway_factory.astart(config=CONFIG, redis=node_url(cluster, f":{WRONG}"))

    async def log() -> str:
        return str(gw.log_text())

    await poll(log, lambda text: re.search(r"WARNING.*redis", text, re.I), 10,
               what="a warning about Redis in the log")
    status, body, _ = await get_health(gw)
    assert status == 503 and body["status"] == "fail", body
    assert body["redis"]["status"] == "fail" and body["postgres"]["status"] == "ok", body
    assert_secret_free({"/health": json.dumps(body), "the gateway log": gw.log_text()},
                       WRONG, PASSWORD)
    return gw, body


async def test_a_wrong_password_fails_health_without_leaking_it(
    cluster: RedisCluster, gateway_factory: Any
) -> None:
    _, body = await wrong_password_gateway(cluster, gateway_factory)
    assert "ok" not in body["redis"]["nodes"].values(), body


async def test_a_wrong_password_is_named_in_the_log(
    cluster: RedisCluster, gateway_factory: Any
) -> None:
    gw, _ = await wrong_password_gateway(cluster, gateway_factory)
    log = gw.log_text()
    assert AUTH_FAILURE.search(log), f"the log does not name the auth failure:\n{log[-1500:]}"
