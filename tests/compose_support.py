"""compose.yaml under podman-compose, for tests/test_compose_e2e.py.

No registry is reachable, so the test adds a generated override file: Redis,
PostgreSQL and nginx come from images built here from Debian packages on the
local Debian base (tools/image.py). The PostgreSQL one keeps the official
image's contract that compose.yaml relies on (POSTGRES_* variables,
/docker-entrypoint-initdb.d run on a new volume); its entrypoint is a file in
its build context. No bridge network is created: every service joins the
network namespace of one small `net` service (slirp4netns, nginx's port 80
published on a loopback port) and reaches the others on 127.0.0.1, as nginx
already does in compose.yaml.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tools.image import DEBIAN_ROOTFS, Podman, build_image, debian_rootfs
from tools.services import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
GATEWAY_TAG = "localhost/event-gateway:test"
SERVICES = ("net", "gateway", "nginx", "redis", "postgres")
APT = ("RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \\\n"
       "      --no-install-recommends {pkgs} && rm -rf /var/lib/apt/lists/*\n")

# The official postgres image's entrypoint, the parts compose.yaml uses.
PG_ENTRYPOINT = """\
#!/bin/sh
set -eu
export PGDATA=/var/lib/postgresql/data PATH=/usr/lib/postgresql/15/bin:$PATH
if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /run/postgresql
    chown -R postgres:postgres "$PGDATA" /run/postgresql
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pw=$(mktemp); printf '%s\\n' "$POSTGRES_PASSWORD" > "$pw"
    initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pw" \\
        --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f "$pw"
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d postgres \\
        -c "CREATE DATABASE \\"$POSTGRES_DB\\"" >/dev/null
    for f in /docker-entrypoint-initdb.d/*.sql; do
        [ -e "$f" ] && psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -f "$f"
    done
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
fi
exec postgres -D "$PGDATA" -c listen_addresses=127.0.0.1
"""

# tag -> {file name: text} of its build context (Containerfile included)
STAND_INS: dict[str, dict[str, str]] = {
    "localhost/compose-redis:test": {"Containerfile": f"FROM {DEBIAN_ROOTFS}\n"
        + APT.format(pkgs="redis-server") + "USER redis\n"
        'CMD ["redis-server", "--bind", "127.0.0.1", "--protected-mode", "no", "--save", ""]\n'},
    "localhost/compose-postgres:test": {
        "docker-entrypoint.sh": PG_ENTRYPOINT,
        "Containerfile": f"FROM {DEBIAN_ROOTFS}\n" + APT.format(pkgs="postgresql-15")
        + "COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh\n"
        "RUN chmod 755 /usr/local/bin/docker-entrypoint.sh && mkdir /docker-entrypoint-initdb.d"
        " \\\n && ln -s /usr/lib/postgresql/15/bin/pg_isready /usr/local/bin/pg_isready\n"
        'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]\n'},
    "localhost/compose-nginx:test": {"Containerfile": f"FROM {DEBIAN_ROOTFS}\n"
        + APT.format(pkgs="nginx") + "RUN rm -f /etc/nginx/sites-enabled/default\n"
        'STOPSIGNAL SIGQUIT\nCMD ["nginx", "-g", "daemon off;"]\n'},
}
REDIS_IMAGE, PG_IMAGE, NGINX_IMAGE = STAND_INS


def build_images(podman: Podman) -> None:
    """The gateway image (the Dockerfile) and the stand-ins; each is cached by content."""
    podman.check()
    build_image(podman, GATEWAY_TAG)  # the Dockerfile as it is now (layers cached)
    debian_rootfs(podman)
    for tag, files in STAND_INS.items():
        key = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
        if podman.exists(tag) and podman.label(tag, "gateway.compose") == key:
            continue
        ctx = podman.state / "compose-context" / tag.split("/")[1].replace(":", "-")
        shutil.rmtree(ctx, ignore_errors=True)
        ctx.mkdir(parents=True)
        for name, text in files.items():
            (ctx / name).write_text(text)
        podman.build(ctx, tag, containerfile=ctx / "Containerfile",
                     labels={"gateway.compose": key}, host_ca=False)


def compose_command() -> list[str]:
    """podman-compose from the venv (setup.cfg pins it), else from PATH; [] if neither."""
    exe = Path(sys.executable).parent / "podman-compose"
    found = str(exe) if exe.exists() else shutil.which("podman-compose")
    return [found] if found else []


class yaml_reset(list[Any]):
    """A list written with the compose `!reset` tag (drop the base file's value)."""


yaml.SafeDumper.add_representer(
    yaml_reset, lambda dumper, data: dumper.represent_sequence("!reset", list(data)))


def override(port: int, nginx_image: str = NGINX_IMAGE) -> dict[str, Any]:
    """The override: local images, one shared slirp4netns namespace, no restarts."""
    shared = "service:net"
    # podman-compose starts a service joining another's namespace only after it
    after_net = {"net": {"condition": "service_started"}}
    return {"services": {
        "net": {"image": DEBIAN_ROOTFS, "command": ["sleep", "infinity"],
                "network_mode": "slirp4netns", "ports": [f"127.0.0.1:{port}:80"],
                "stop_signal": "SIGKILL"},
        "gateway": {
            "image": GATEWAY_TAG, "network_mode": shared, "ports": yaml_reset([]),
            "environment": {
                "REDIS_URL": "redis://127.0.0.1:6379/0",
                # no password in the URL: compose.yaml passes it as PGPASSWORD
                "DATABASE_URL": "postgresql://gateway@127.0.0.1:5432/gateway",
            },
            "restart": "no", "depends_on": after_net},
        "nginx": {"image": nginx_image, "network_mode": shared, "restart": "no",
                  "depends_on": after_net},
        "redis": {"image": REDIS_IMAGE, "network_mode": shared, "restart": "no",
                  "depends_on": after_net},
        "postgres": {"image": PG_IMAGE, "network_mode": shared, "restart": "no",
                     "depends_on": after_net},
    }}


class Compose:
    """compose.yaml + a generated override as one project; `force_clean` removes it."""

    def __init__(self, podman: Podman, workdir: Path, override: dict[str, Any]) -> None:
        self.podman = podman
        self.project = f"gwcompose{os.getpid()}x{free_port()}"
        self.override = workdir / "compose.override.yaml"
        self.override.write_text(yaml.safe_dump(override, sort_keys=False))
        self.env = {**podman.env(), "POSTGRES_PASSWORD": "compose/test@pw:1",
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

    def by_service(self) -> dict[str, dict[str, Any]]:
        return {x["Labels"].get("com.docker.compose.service"): x for x in self.containers()}

    def not_running(self) -> list[str]:
        """Services (the override's `net` too) without a running container."""
        states = {svc: x["State"] for svc, x in self.by_service().items()}
        return [f"{svc}: {states.get(svc, 'no container')}" for svc in SERVICES
                if states.get(svc) != "running"]

    def inspect(self, name: str) -> dict[str, Any]:
        out = self.podman.run("inspect", name, check=False)
        return dict(json.loads(out.stdout)[0]) if out.returncode == 0 else {}

    def logs(self) -> str:
        parts = []
        for c in self.containers():
            out = self.podman.run("logs", "--tail", "30", c["Id"], check=False)
            parts.append(f"--- {c['Names'][0]} ({c['State']}) ---\n{out.stdout}{out.stderr}")
        return "\n".join(parts)

    async def up(self, limit_s: float = 240) -> subprocess.CompletedProcess[str]:
        """`up -d`, running the healthchecks meanwhile.

        podman runs HEALTHCHECKs from systemd timers; without systemd (as here)
        nothing runs them and `condition: service_healthy` would wait forever.
        This plays the timer: `podman healthcheck run` about every second on
        every running container of the project.
        """
        task = asyncio.create_task(asyncio.to_thread(self.run, "up", "-d", timeout=limit_s))
        while not task.done():
            await asyncio.to_thread(self.run_healthchecks)
            await asyncio.wait({task}, timeout=1)
        return task.result()

    def run_healthchecks(self) -> None:
        for c in self.containers():
            if c["State"] == "running":
                self.podman.run("healthcheck", "run", c["Id"], check=False, timeout=30)

    def down(self) -> subprocess.CompletedProcess[str]:
        return self.run("down", "--volumes", "--timeout", "20")

    def force_clean(self) -> None:
        """Remove what this project left: its containers, volumes and pods (by name)."""
        for c in self.containers():
            self.podman.run("rm", "--force", "--depend", "--time", "0", c["Id"], check=False)
        for kind in ("volume", "pod"):
            out = self.podman.run(kind, "ls", "--format", "{{.Name}}", check=False)
            for name in out.stdout.split():
                if name.startswith(self.project) or f"_{self.project}" in name:
                    self.podman.run(kind, "rm", "--force", name, check=False)
