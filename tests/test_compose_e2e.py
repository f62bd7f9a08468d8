"""compose.yaml up end to end with podman-compose (PyPI, pinned in setup.cfg).

No registry is reachable, so the test generates a small override file: Redis,
PostgreSQL and nginx come from images built here from Debian packages on the
local Debian base (tools/image.py; the PostgreSQL one mimics the official
image's entrypoint: POSTGRES_* variables, /docker-entrypoint-initdb.d on a new
volume), and the gateway image is the Dockerfile's (built by the image test's
code, cached under .run/podman). The other change: no bridge network is created
here, so every service joins the network namespace of one small `net` service
(slirp4netns, nginx's port 80 published on a free loopback port) and reaches
the others on 127.0.0.1, as nginx already does in compose.yaml. Everything
else (depends_on with health conditions, volumes, the mounted configs, the
gateway's environment apart from host names) is compose.yaml's.

Checked: every container runs (podman-compose may exit 0 when services
failed), `depends_on: condition: service_healthy` held (the gateway started
after Redis and PostgreSQL were healthy), the gateway answers through nginx, a
published event reaches a stream through nginx, `down` leaves no container,
pod or volume. A service that cannot start fails the test
(test_compose_fails_when_a_service_does_not_come_up).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import open_stream, wait_until

from tools.image import DEBIAN_ROOTFS, ImageError, Podman, build_image, debian_rootfs
from tools.services import free_port

pytestmark = pytest.mark.timeout(900)

REPO_ROOT = Path(__file__).resolve().parent.parent
GATEWAY_TAG = "localhost/event-gateway:test"

# Debian-built stand-ins for redis:7, postgres:15 and nginx (tags: what the override uses).
REDIS_IMAGE = ("localhost/compose-redis:test", f"""\
FROM {DEBIAN_ROOTFS}
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \\
      --no-install-recommends redis-server && rm -rf /var/lib/apt/lists/*
USER redis
CMD ["redis-server", "--bind", "127.0.0.1", "--protected-mode", "no", "--save", ""]
""")

# The official postgres image's contract, the parts compose.yaml uses.
PG_ENTRYPOINT = r"""#!/bin/sh
set -eu
export PGDATA=/var/lib/postgresql/data PATH=/usr/lib/postgresql/15/bin:$PATH
if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /run/postgresql
    chown -R postgres:postgres "$PGDATA" /run/postgresql
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pw=$(mktemp); printf '%s\n' "$POSTGRES_PASSWORD" > "$pw"
    initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pw" --auth=scram-sha-256 >/dev/null
    rm -f "$pw"
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d postgres \
        -c "CREATE DATABASE \"$POSTGRES_DB\"" >/dev/null
    for f in /docker-entrypoint-initdb.d/*.sql; do
        [ -e "$f" ] && psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -f "$f"
    done
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
fi
exec postgres -D "$PGDATA" -c listen_addresses=127.0.0.1
"""
PG_IMAGE = ("localhost/compose-postgres:test", f"""\
FROM {DEBIAN_ROOTFS}
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \\
      --no-install-recommends postgresql-15 && rm -rf /var/lib/apt/lists/* \\
 && mkdir /docker-entrypoint-initdb.d \\
 && printf '%s' {json.dumps(PG_ENTRYPOINT)} > /usr/local/bin/docker-entrypoint.sh \\
 && chmod 755 /usr/local/bin/docker-entrypoint.sh \\
 && ln -s /usr/lib/postgresql/15/bin/pg_isready /usr/local/bin/pg_isready
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
""")

NGINX_IMAGE = ("localhost/compose-nginx:test", f"""\
FROM {DEBIAN_ROOTFS}
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \\
      --no-install-recommends nginx && rm -rf /var/lib/apt/lists/* \\
 && rm -f /etc/nginx/sites-enabled/default
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
""")


def _report(request: pytest.FixtureRequest, line: str) -> None:
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(line)


@pytest.fixture(scope="module")
def images(request: pytest.FixtureRequest) -> Podman:
    podman = Podman()
    t0 = time.monotonic()
    try:
        podman.check()
        if not podman.exists(GATEWAY_TAG):
            build_image(podman, GATEWAY_TAG)
        debian_rootfs(podman)
        for tag, containerfile in (REDIS_IMAGE, PG_IMAGE, NGINX_IMAGE):
            key = hashlib.sha256(containerfile.encode()).hexdigest()[:16]
            if podman.exists(tag) and podman.label(tag, "gateway.compose") == key:
                continue
            podman.build(podman.state, tag, stdin_text=containerfile,
                         labels={"gateway.compose": key}, host_ca=False)
    except ImageError as e:
        pytest.fail(str(e))
    _report(request, f"\ncompose images ready in {time.monotonic() - t0:.0f}s")
    return podman


def compose_command() -> list[str]:
    exe = Path(sys.executable).parent / "podman-compose"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("podman-compose")
    if found is None:
        pytest.fail("podman-compose not installed (pip install -e '.[test]')")
    return [found]


class Compose:
    """compose.yaml + a generated override, as project `name`, in `workdir`."""

    def __init__(self, podman: Podman, workdir: Path, override: dict[str, Any]) -> None:
        self.podman = podman
        self.project = f"gwcompose{os.getpid()}x{free_port()}"
        self.override = workdir / "compose.override.yaml"
        self.override.write_text(yaml.safe_dump(override, sort_keys=False))
        self.env = {**podman.env(), "POSTGRES_PASSWORD": "compose-test-pw",
                    "COMPOSE_PROJECT_NAME": self.project}
        self.env.pop("DOCKER_HOST", None)

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        cmd = [*compose_command(), "--project-name", self.project,
               "-f", str(REPO_ROOT / "compose.yaml"), "-f", str(self.override), *args]
        return subprocess.run(cmd, cwd=REPO_ROOT, env=self.env, text=True, timeout=timeout,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def containers(self) -> list[dict[str, Any]]:
        out = self.podman.run("ps", "-a", "--format", "json", "--filter",
                              f"label=io.podman.compose.project={self.project}", check=False)
        return list(json.loads(out.stdout or "[]"))

    def inspect(self, name: str) -> dict[str, Any]:
        out = self.podman.run("inspect", name, check=False)
        return dict(json.loads(out.stdout)[0]) if out.returncode == 0 else {}

    def logs(self) -> str:
        parts = []
        for c in self.containers():
            name = c["Names"][0]
            out = self.podman.run("logs", "--tail", "30", name, check=False)
            parts.append(f"--- {name} ({c['State']}) ---\n{out.stdout}{out.stderr}")
        return "\n".join(parts)

    async def up(self) -> subprocess.CompletedProcess[str]:
        """`up -d`, running the healthchecks meanwhile.

        podman runs HEALTHCHECKs from systemd timers; without systemd (as here)
        nothing runs them and `depends_on: condition: service_healthy` would
        wait forever. This plays the timer: `podman healthcheck run` each
        second on every running container of the project that has one.
        """
        task = asyncio.create_task(asyncio.to_thread(self.run, "up", "-d"))
        while not task.done():
            await asyncio.to_thread(self.run_healthchecks)
            await asyncio.wait({task}, timeout=1)
        return task.result()

    def run_healthchecks(self) -> None:
        for c in self.containers():
            if c["State"] == "running":
                self.podman.run("healthcheck", "run", c["Id"], check=False)

    def down(self) -> subprocess.CompletedProcess[str]:
        return self.run("down", "--volumes", "--timeout", "20")

    def force_clean(self) -> None:
        for c in self.containers():
            self.podman.run("rm", "--force", "--time", "0", c["Id"], check=False)
        out = self.podman.run("volume", "ls", "--format", "{{.Name}}", check=False)
        for vol in out.stdout.split():
            if vol.startswith(self.project):
                self.podman.run("volume", "rm", "--force", vol, check=False)
        out = self.podman.run("pod", "ls", "--format", "{{.Name}}", check=False)
        for pod in out.stdout.split():
            if self.project in pod:
                self.podman.run("pod", "rm", "--force", pod, check=False)


def override(port: int, nginx_image: str = NGINX_IMAGE[0]) -> dict[str, Any]:
    shared = "service:net"
    after_net = {"net": {"condition": "service_started"}}  # podman-compose does not infer it
    return {
        "services": {
            # holds the one network namespace; nginx's port 80 published on loopback
            "net": {
                "image": DEBIAN_ROOTFS,
                "command": ["sleep", "infinity"],
                "network_mode": "slirp4netns",
                "ports": [f"127.0.0.1:{port}:80"],
                "stop_signal": "SIGKILL",
            },
            "gateway": {
                "image": GATEWAY_TAG,
                "network_mode": shared,
                "ports": yaml_reset([]),
                "environment": {
                    "REDIS_URL": "redis://127.0.0.1:6379/0",
                    "DATABASE_URL":
                        "postgresql://gateway:${POSTGRES_PASSWORD}@127.0.0.1:5432/gateway",
                },
                "restart": "no",
                "depends_on": after_net,
            },
            "nginx": {"image": nginx_image, "network_mode": shared, "restart": "no",
                      "depends_on": after_net},
            "redis": {"image": REDIS_IMAGE[0], "network_mode": shared, "restart": "no",
                      "depends_on": after_net},
            "postgres": {"image": PG_IMAGE[0], "network_mode": shared, "restart": "no",
                         "depends_on": after_net},
        },
    }


class yaml_reset(list):
    """A list written with the compose `!reset` tag (drop the base file's value)."""


yaml.SafeDumper.add_representer(
    yaml_reset, lambda dumper, data: dumper.represent_sequence("!reset", list(data)))


@pytest.fixture
def compose_factory(images: Podman, tmp_path: Path) -> Iterator[Any]:
    made: list[Compose] = []

    def make(port: int, **kwargs: Any) -> Compose:
        c = Compose(images, tmp_path, override(port, **kwargs))
        made.append(c)
        return c

    yield make
    for c in made:
        c.force_clean()


def _get(url: str) -> tuple[int | None, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return None, b""


SERVICES = ("net", "gateway", "nginx", "redis", "postgres")


def not_running(c: Compose) -> list[str]:
    """Services of compose.yaml (and the override's `net`) without a running container."""
    states = {x["Labels"].get("com.docker.compose.service"): x["State"]
              for x in c.containers()}
    return [f"{svc}: {states.get(svc, 'no container')}" for svc in SERVICES
            if states.get(svc) != "running"]


def _started_at(info: dict[str, Any]) -> str:
    return str(info["State"]["StartedAt"])


async def test_compose_up_serves_through_nginx_and_down_leaves_nothing(
    compose_factory: Any,
) -> None:
    port = free_port()
    c: Compose = compose_factory(port)
    up = await c.up()
    assert up.returncode == 0, up.stdout[-4000:]

    # podman-compose may exit 0 with failed services: every container must run
    await asyncio.to_thread(
        wait_until, lambda: not not_running(c), 60, 0.5,
        f"for every service to run: {not_running(c)}\n{up.stdout[-2000:]}\n{c.logs()}")
    containers = {x["Labels"]["com.docker.compose.service"]: x for x in c.containers()}

    base = f"http://127.0.0.1:{port}"
    await asyncio.to_thread(
        wait_until, lambda: _get(f"{base}/health")[0] == 200, 90, 0.5,
        f"for /health 200 through nginx\n{up.stdout[-2000:]}")
    assert not_running(c) == [], c.logs()

    # depends_on: condition: service_healthy held
    info = {svc: c.inspect(x["Id"]) for svc, x in containers.items()}
    for dep in ("redis", "postgres"):
        health = info[dep]["State"].get("Health") or info[dep]["State"].get("Healthcheck")
        assert health and health["Status"] == "healthy", (dep, health)
        assert _started_at(info[dep]) < _started_at(info["gateway"])

    # the schema was applied from /docker-entrypoint-initdb.d; add a merchant as the
    # comment in compose.yaml says, open a stream through nginx, publish in Redis
    sql = "INSERT INTO merchants (id, shop_domain) VALUES ('1', 'demo.myshopify.com')"
    ins = c.run("exec", "-T", "postgres", "psql", "-U", "gateway", "-d", "gateway", "-c", sql)
    assert ins.returncode == 0, ins.stdout
    async with open_stream(f"{base}/api/realtime/events?shop=demo.myshopify.com") as stream:
        assert stream.status == 200
        assert (await stream.next_event_of("connected", timeout=10)).json()["merchantId"] == "1"
        deadline = time.monotonic() + 10
        while True:
            pub = await asyncio.to_thread(
                c.run, "exec", "-T", "redis", "redis-cli", "PUBLISH", "merchant:1:progress",
                '{"jobId":"j1","percent":50}')
            if pub.stdout.strip().endswith("1") or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        ev = await stream.next_event_of("progress", timeout=10)
        assert ev.json() == {"jobId": "j1", "percent": 50}

    down = await asyncio.to_thread(c.down)
    assert down.returncode == 0, down.stdout[-3000:]
    assert c.containers() == []
    volumes = c.podman.run("volume", "ls", "--format", "{{.Name}}").stdout.split()
    assert not [v for v in volumes if v.startswith(c.project)], volumes
    assert _get(f"{base}/health")[0] is None


async def test_compose_fails_when_a_service_does_not_come_up(compose_factory: Any) -> None:
    """nginx's image lacks nginx here: its container exits, and the check sees it."""
    port = free_port()
    c: Compose = compose_factory(port, nginx_image=DEBIAN_ROOTFS)  # no nginx binary in it
    up = await c.up()
    await asyncio.sleep(2)
    problems = not_running(c)
    assert any(p.startswith("nginx:") for p in problems), (problems, up.stdout[-3000:])
    assert _get(f"http://127.0.0.1:{port}/health")[0] != 200
