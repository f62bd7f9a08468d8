"""The container image, built from the Dockerfile and run as users run it.

`tools/image.py` builds it with podman, every byte of podman state under
.run/podman (no global config, no network created, nothing pulled): on
python:3.11-slim when that image is present, else on a Python base built here
from Debian packages (cached; the first build takes a minute or two). The
container runs with the image's own USER, CMD, HEALTHCHECK and default
config, a read-only root filesystem without even a /tmp, all capabilities
dropped, in its own network namespace (slirp4netns) with 8080 published on a
free loopback port; it reaches the session's Redis and PostgreSQL on the host's
loopback through slirp4netns (10.0.2.2).

GATEWAY_TEST_DOCKERFILE=path builds another Dockerfile instead (to see this
test fail on a broken one).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import http_status, open_stream, podman_turn, publish, report, wait_for, wait_until

from tools.image import ImageError, Podman, build_image
from tools.podman import STATE
from tools.services import PostgresServer, RedisServer, free_port

pytestmark = pytest.mark.timeout(900)

REPO_ROOT = Path(__file__).resolve().parent.parent
TAG = "localhost/event-gateway:test"
HOST_FROM_CONTAINER = "10.0.2.2"  # slirp4netns: the host's loopback
SHUTDOWN_TIMEOUT = 10  # config/gateway.yaml, server.shutdown_timeout (the image's default)


@pytest.fixture(scope="module", autouse=True)
def _podman_to_this_module() -> Iterator[None]:
    """First set up, last torn down: the module's containers are gone before it ends."""
    with podman_turn(STATE):
        yield


@pytest.fixture(scope="module")
def image(request: pytest.FixtureRequest) -> tuple[Podman, str]:
    podman = Podman()
    try:
        podman.check()
        t0 = time.monotonic()
        dockerfile = os.environ.get("GATEWAY_TEST_DOCKERFILE")
        tag = build_image(podman, TAG, Path(dockerfile).resolve() if dockerfile else None)
    except ImageError as e:
        pytest.fail(str(e))
    size = podman.size(tag)
    report(request.config, f"\nimage {tag}: {size / 1e6:.0f} MB (built in "
                           f"{time.monotonic() - t0:.0f}s)")
    return podman, tag


def _from_container(url: str) -> str:
    return url.replace("127.0.0.1", HOST_FROM_CONTAINER).replace("localhost", HOST_FROM_CONTAINER)


class Container:
    """One `podman run -d` of the image; removed (by name) at the end."""

    def __init__(self, podman: Podman, tag: str, env: dict[str, str], *extra: str) -> None:
        self.podman = podman
        self.name = f"gw-image-test-{os.getpid()}-{free_port()}"
        self.port = free_port()
        args = [
            "run", "-d", "--name", self.name,
            "--network", "slirp4netns:allow_host_loopback=true",
            "-p", f"127.0.0.1:{self.port}:8080",
            "--read-only", "--read-only-tmpfs=false",
            "--cap-drop=all", "--security-opt=no-new-privileges",
            *extra,
        ]
        for k, v in env.items():
            args += ["-e", f"{k}={v}"]
        podman.run(*args, tag)
        self.base = f"http://127.0.0.1:{self.port}"

    def podman_(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return self.podman.run(*args, check=check, timeout=60)

    def exec(self, *cmd: str) -> subprocess.CompletedProcess[str]:
        return self.podman_("exec", self.name, *cmd)

    def inspect(self) -> dict[str, Any]:
        out = self.podman_("inspect", self.name)
        return json.loads(out.stdout)[0] if out.returncode == 0 else {}

    def logs(self) -> str:
        out = self.podman_("logs", self.name)
        return (out.stdout + out.stderr)[-6000:]

    def remove(self) -> None:
        self.podman_("rm", "--force", "--time", "0", self.name)


@pytest.fixture
def container_factory(image: tuple[Podman, str]) -> Iterator[Any]:
    made: list[Container] = []

    def make(env: dict[str, str], *extra: str) -> Container:
        c = Container(image[0], image[1], env, *extra)
        made.append(c)
        return c

    yield make
    for c in made:
        print(f"---- {c.name} log ----\n{c.logs()}")
        c.remove()


def test_image_metadata(image: tuple[Podman, str]) -> None:
    """What `docker run` relies on: user, command, healthcheck, stop signal, port."""
    podman, tag = image
    info = json.loads(podman.run("image", "inspect", tag).stdout)[0]
    cfg = info["Config"]
    assert cfg["User"] == "10001:10001"
    assert cfg["Cmd"] == ["python", "-m", "gateway"]
    assert cfg.get("StopSignal") == "SIGTERM"
    assert "8080/tcp" in cfg.get("ExposedPorts", {})
    # --format oci would silently drop it
    check = info.get("Healthcheck") or {}
    assert "/app/healthcheck.py" in check.get("Test", []), info.get("Healthcheck")


def test_healthcheck_follows_the_configured_port(
    container_factory: Any, redis_server: RedisServer, postgres_server: PostgresServer,
    tmp_path: Path,
) -> None:
    """A mounted config listening on 9090: the image's HEALTHCHECK probes 9090, not 8080."""
    config = tmp_path / "gateway.yaml"
    text = (REPO_ROOT / "config" / "gateway.yaml").read_text()
    assert "  port: 8080 " in text
    config.write_text(text.replace("  port: 8080 ", "  port: ${GW_PORT:-9090} ", 1))
    config.chmod(0o644)
    c: Container = container_factory({
        "REDIS_URL": _from_container(redis_server.url),
        "DATABASE_URL": _from_container(postgres_server.dsn),
    }, "-v", f"{config}:/app/config/gateway.yaml:ro")

    def healthy() -> bool:
        state = c.inspect().get("State", {})
        assert state.get("Running"), f"container not running: {state}\n{c.logs()}"
        return c.podman_("healthcheck", "run", c.name).returncode == 0

    wait_until(healthy, 60, 0.5, f"for the HEALTHCHECK on 9090\n{c.logs()}")
    assert "9090" in c.logs()  # it does listen there, not on 8080
    live = c.exec("python", "/app/healthcheck.py")
    assert live.returncode == 0, live


async def test_image_runs_read_only_as_non_root_and_drains_on_sigterm(
    container_factory: Any,
    redis_server: RedisServer,
    postgres_server: PostgresServer,
    merchant: tuple[str, str],
) -> None:
    mid, shop = merchant
    c: Container = await asyncio.to_thread(container_factory, {
        "REDIS_URL": _from_container(redis_server.url),
        "DATABASE_URL": _from_container(postgres_server.dsn),
    })

    def ready() -> bool:
        state = c.inspect().get("State", {})
        assert state.get("Running"), f"container not running: {state}\n{c.logs()}"
        return http_status(f"{c.base}/health") == 200

    await asyncio.to_thread(wait_until, ready, 60, 0.25, "for /health 200 from the container")

    # the gateway process (PID 1) runs as 10001, on a root filesystem it cannot write
    status = (await asyncio.to_thread(c.exec, "cat", "/proc/1/status")).stdout
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert set(uids) == {"10001"}, status
    touch = await asyncio.to_thread(c.exec, "touch", "/app/written", "/tmp/written")
    assert touch.returncode != 0 and "Read-only file system" in touch.stderr, touch

    async with open_stream(f"{c.base}/api/realtime/events?shop={shop}") as stream:
        assert stream.status == 200
        connected = await stream.next_event_of("connected", timeout=10)
        assert connected.json()["merchantId"] == mid

        # a plain PUBLISH from the host reaches the stream through the container
        channel = f"merchant:{mid}:progress"
        # publish until one subscriber got it (the merchant's subscription is async)
        await wait_for(lambda: publish(redis_server.url, channel, {"jobId": "j1", "percent": 5}),
                       timeout=10, interval=0.1, message="(no subscriber for the channel)")
        ev = await stream.next_event_of("progress", timeout=10)
        assert ev.json() == {"jobId": "j1", "percent": 5}

        # a durable publish with the image's own CLI (the wheel's publish.lua)
        out = await asyncio.to_thread(
            c.exec, "python", "-m", "gateway", "publish", mid, "completion", '{"jobId": "j1"}')
        assert out.returncode == 0, out
        durable_id = out.stdout.strip()
        ev = await stream.next_event_of("completion", timeout=10)
        assert (ev.id, ev.json()) == (durable_id, {"jobId": "j1"})

        # the image's HEALTHCHECK, run by podman
        hc = await asyncio.to_thread(c.podman_, "healthcheck", "run", c.name)
        assert hc.returncode == 0, hc
        health = c.inspect()["State"].get("Health") or c.inspect()["State"].get("Healthcheck")
        assert health and health["Status"] == "healthy", health

        # SIGTERM: the stream gets `event: shutdown`, the container exits 0 in time
        t0 = time.monotonic()
        kill = await asyncio.to_thread(c.podman_, "kill", "--signal", "TERM", c.name)
        assert kill.returncode == 0, kill
        shutdown = await stream.next_event_of("shutdown", timeout=SHUTDOWN_TIMEOUT)
        assert shutdown.json()["reason"] == "shutdown"
        waited = await asyncio.to_thread(c.podman_, "wait", c.name)
        elapsed = time.monotonic() - t0
    assert waited.stdout.strip() == "0", (waited, c.logs())
    assert elapsed < SHUTDOWN_TIMEOUT + 2, f"exited after {elapsed:.1f}s"


def test_podman_state_stays_under_run(image: tuple[Podman, str]) -> None:
    """Nothing global: storage, runtime files and config all under .run/podman."""
    podman, _ = image
    info = json.loads(podman.run("info", "--format", "json").stdout)
    store = info["store"]
    for key in ("graphRoot", "runRoot"):
        assert Path(store[key]).is_relative_to(podman.state), store
    assert Path(store["configFile"]) == podman.storage_conf
    networks = podman.run("network", "ls", "--format", "{{.Name}}").stdout.split()
    assert set(networks) <= {"podman"}, networks  # the implicit default, never created
    with contextlib.suppress(FileNotFoundError):
        made = [p.name for p in (podman.state / "networks").iterdir() if p.suffix != ".lock"]
        assert not made, made
    bridges = [p.name for p in Path("/sys/class/net").iterdir()
               if p.name.startswith(("cni-podman", "podman"))]
    assert not bridges, f"a podman bridge exists: {bridges}"
