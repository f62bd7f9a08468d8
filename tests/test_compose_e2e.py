"""compose.yaml up end to end with podman-compose (PyPI, pinned in setup.cfg).

compose.yaml is what users run; the test adds only a generated override
(tests/compose_support.py): local Debian-built stand-ins for redis:7,
postgres:15 and nginx, one shared slirp4netns network namespace instead of a
bridge network, no restarts. Everything else (depends_on with health
conditions, the schema volume, the mounted configs, the gateway's environment
apart from host names) is compose.yaml's.

Checked: every container runs (podman-compose may exit 0 when services
failed), every healthcheck passes and the dependencies started first (podman-compose
on podman 4.3 does not wait for `service_healthy`), the gateway answers
through nginx, a stream through nginx receives an event published in Redis and
a durable one published with the CLI inside the gateway container, `down`
leaves no container or volume. A service that cannot start fails the check
(test_compose_check_fails_when_a_service_does_not_come_up).
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from compose_support import DEBIAN_ROOTFS, Compose, build_images, compose_command, override
from support import open_stream, podman_turn, wait_until

from tools.image import ImageError, Podman
from tools.podman import STATE
from tools.services import free_port

pytestmark = pytest.mark.timeout(900)
Factory = Callable[..., Compose]


@pytest.fixture(scope="module", autouse=True)
def _podman_to_this_module() -> Iterator[None]:
    """First set up, last torn down: the module's containers are gone before it ends."""
    with podman_turn(STATE):
        yield


@pytest.fixture(scope="module")
def images(request: pytest.FixtureRequest) -> Podman:
    if not compose_command():
        pytest.fail("podman-compose not installed (pip install -e '.[test]')")
    podman = Podman()
    t0 = time.monotonic()
    try:
        build_images(podman)
    except ImageError as e:
        pytest.fail(str(e))
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"\ncompose images ready in {time.monotonic() - t0:.0f}s")
    return podman


@pytest.fixture
def compose_factory(images: Podman, tmp_path: Path) -> Iterator[Factory]:
    made: list[Compose] = []

    def make(port: int, **kwargs: Any) -> Compose:
        c = Compose(images, tmp_path, override(port, **kwargs))
        made.append(c)
        return c

    yield make
    for c in made:
        c.force_clean()
        volumes = c.podman.run("volume", "ls", "--format", "{{.Name}}").stdout.split()
        left = [x["Names"][0] for x in c.containers()] + [
            v for v in volumes if v.startswith(c.project)]
        assert not left, f"left behind: {left}"


def _get(url: str) -> tuple[int | None, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return None, b""


async def test_compose_up_serves_through_nginx_and_down_leaves_nothing(
    compose_factory: Factory,
) -> None:
    port = free_port()
    c = compose_factory(port)
    t0 = time.monotonic()
    up = await c.up()
    assert up.returncode == 0, up.stdout[-4000:]
    # podman-compose may exit 0 with failed services: every container must run
    await asyncio.to_thread(wait_until, lambda: not c.not_running(), 60, 0.5,
                            f"for every service to run: {c.not_running()}\n{c.logs()}")
    base = f"http://127.0.0.1:{port}"
    await asyncio.to_thread(wait_until, lambda: _get(f"{base}/health")[0] == 200, 90, 0.5,
                            f"for /health 200 through nginx\n{c.logs()}")
    print(f"compose up to /health 200 through nginx: {time.monotonic() - t0:.1f}s")
    assert c.not_running() == [], c.logs()

    # compose.yaml's healthchecks (Redis, PostgreSQL) and the image's HEALTHCHECK pass.
    # podman-compose 1.6 on podman 4.3 does not wait for `condition: service_healthy`
    # ("podman 4.3.1 doesn't support healthy"): it only orders the starts, and the
    # gateway copes by starting while its dependencies are down (/health 503 until then).
    await asyncio.to_thread(c.run_healthchecks)
    info = {svc: c.inspect(x["Id"]) for svc, x in c.by_service().items()}
    for svc in ("redis", "postgres", "gateway"):
        health = info[svc]["State"].get("Health") or info[svc]["State"].get("Healthcheck")
        assert health and health["Status"] == "healthy", (svc, health)
    for dep in ("redis", "postgres"):
        assert info[dep]["State"]["StartedAt"] < info["gateway"]["State"]["StartedAt"]

    # the schema came from /docker-entrypoint-initdb.d; add a merchant as the
    # comment in compose.yaml says, open a stream through nginx, publish both ways
    sql = "INSERT INTO merchants (id, shop_domain) VALUES ('1', 'demo.myshopify.com')"
    ins = c.run("exec", "-T", "postgres", "psql", "-U", "gateway", "-d", "gateway", "-c", sql)
    assert ins.returncode == 0, ins.stdout
    async with open_stream(f"{base}/api/realtime/events?shop=demo.myshopify.com") as stream:
        assert stream.status == 200
        assert (await stream.next_event_of("connected", timeout=10)).json()["merchantId"] == "1"
        # the stream is open, so the merchant is subscribed: one receiver
        pub = await asyncio.to_thread(
            c.run, "exec", "-T", "redis", "redis-cli", "PUBLISH", "merchant:1:progress",
            '{"jobId":"j1","percent":50}')
        assert pub.stdout.strip().endswith("1"), pub.stdout
        ev = await stream.next_event_of("progress", timeout=10)
        assert ev.json() == {"jobId": "j1", "percent": 50}
        durable = await asyncio.to_thread(
            c.run, "exec", "-T", "gateway", "python", "-m", "gateway", "publish", "1",
            "completion", '{"jobId":"j1","percent":100}')
        assert durable.returncode == 0, durable.stdout
        ev = await stream.next_event_of("completion", timeout=10)
        assert ev.json() == {"jobId": "j1", "percent": 100}
        assert ev.id == durable.stdout.strip().splitlines()[-1]

    down = await asyncio.to_thread(c.down)
    assert down.returncode == 0, down.stdout[-3000:]
    assert c.containers() == []
    volumes = c.podman.run("volume", "ls", "--format", "{{.Name}}").stdout.split()
    assert not [v for v in volumes if v.startswith(c.project)], volumes
    assert _get(f"{base}/health")[0] is None


async def test_compose_check_fails_when_a_service_does_not_come_up(
    compose_factory: Factory,
) -> None:
    """nginx's image lacks nginx here: its container never runs, and the check sees it."""
    port = free_port()
    c = compose_factory(port, nginx_image=DEBIAN_ROOTFS)  # no nginx binary in it
    await c.up()
    # the gateway comes up (it only waits for Redis and PostgreSQL), nginx does not
    await asyncio.to_thread(
        wait_until, lambda: c.by_service().get("gateway", {}).get("State") == "running",
        60, 0.5, f"for the gateway container\n{c.logs()}")
    problems = c.not_running()
    assert [p for p in problems if p.startswith("nginx:")] == problems, (problems, c.logs())
    assert _get(f"http://127.0.0.1:{port}/health")[0] != 200
