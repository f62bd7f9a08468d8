"""Podman with every file it writes under one directory (default ``.run/podman``).

Nothing global changes: podman reads a private containers.conf, storage.conf,
registries.conf and policy.json written under the state directory (via
``CONTAINERS_CONF``, ``CONTAINERS_STORAGE_CONF``, ``CONTAINERS_REGISTRIES_CONF``
and ``--signature-policy``), keeps its images, layers, runtime files and
temporary files there too, and never creates a network (builds and containers
use the host's network; callers bind 127.0.0.1). What it builds is
``tools/image.py``'s business.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
from pathlib import Path

__all__ = ["CA_BUNDLE", "PACKAGES", "STATE", "ImageError", "Podman"]

REPO_ROOT = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("GATEWAY_PODMAN_STATE") or REPO_ROOT / ".run" / "podman")
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PACKAGES = ("podman", "runc", "debootstrap")


class ImageError(RuntimeError):
    """podman is missing, or a build or a podman command failed."""


def _ulimits() -> str:
    """Container ulimits within ours: podman's defaults (1048576 open files, 4194304
    processes) are above the hard limits here, and runc then fails to start anything."""
    out = []
    for name, rlim, want in (("nofile", resource.RLIMIT_NOFILE, 65536),
                             ("nproc", resource.RLIMIT_NPROC, 16384)):
        hard = resource.getrlimit(rlim)[1]
        n = want if hard == resource.RLIM_INFINITY else min(hard, want)
        out.append(f'"{name}={n}:{n}"')
    return ", ".join(out)


class Podman:
    """podman with every file it writes under ``state`` (default .run/podman)."""

    def __init__(self, state: Path = STATE) -> None:
        self.state = state
        self.conf = state / "containers.conf"
        self.storage_conf = state / "storage.conf"
        self.registries_conf = state / "registries.conf"
        self.policy = state / "policy.json"
        self.tmp = state / "tmp"

    # -- configuration -------------------------------------------------------

    def write_config(self) -> None:
        s = self.state
        for d in ("storage", "run", "tmp", "libpod", "volumes", "networks", "xdg/config",
                  "xdg/data", "xdg/cache", "xdg/runtime", "cache"):
            (s / d).mkdir(parents=True, exist_ok=True)
        os.chmod(s / "xdg" / "runtime", 0o700)
        self._write(self.conf, f"""\
# written by tools/podman.py; podman reads it through CONTAINERS_CONF
[containers]
default_ulimits = [{_ulimits()}]
log_driver = "k8s-file"
netns = "host"

[network]
network_config_dir = "{s}/networks"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "none"
tmp_dir = "{s}/libpod"
volume_path = "{s}/volumes"
image_copy_tmp_dir = "{s}/tmp"
""")
        self._write(self.storage_conf, f"""\
# written by tools/podman.py; podman reads it through CONTAINERS_STORAGE_CONF
[storage]
driver = "overlay"
runroot = "{s}/run"
graphroot = "{s}/storage"
""")
        # No search registries: a short name never resolves to a pull.
        self._write(self.registries_conf, "unqualified-search-registries = []\n")
        self._write(self.policy, json.dumps(
            {"default": [{"type": "insecureAcceptAnything"}]}, indent=2) + "\n")

    @staticmethod
    def _write(path: Path, text: str) -> None:
        if not path.exists() or path.read_text() != text:
            path.write_text(text)

    def env(self) -> dict[str, str]:
        s = self.state
        env = dict(os.environ)
        env.update(
            CONTAINERS_CONF=str(self.conf),
            CONTAINERS_STORAGE_CONF=str(self.storage_conf),
            CONTAINERS_REGISTRIES_CONF=str(self.registries_conf),
            XDG_CONFIG_HOME=str(s / "xdg" / "config"),
            XDG_DATA_HOME=str(s / "xdg" / "data"),
            XDG_CACHE_HOME=str(s / "xdg" / "cache"),
            XDG_RUNTIME_DIR=str(s / "xdg" / "runtime"),
            TMPDIR=str(self.tmp),
            BUILDAH_FORMAT="docker",
        )
        env.pop("CONTAINER_HOST", None)
        return env

    # -- running podman ------------------------------------------------------

    def check(self) -> None:
        missing = [p for p in ("podman", "runc") if shutil.which(p) is None]
        if missing:
            raise ImageError(
                f"{' and '.join(missing)} not installed: "
                f"apt-get install --no-install-recommends {' '.join(PACKAGES)} "
                "(make test's bootstrap installs them as root)")
        if os.geteuid() != 0:
            raise ImageError("the image is built with rootful podman here: run as root")
        self.write_config()

    def cmd(self, *args: str) -> list[str]:
        return ["podman", *args]

    def run(self, *args: str, check: bool = True, capture: bool = True,
            timeout: float | None = 600) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self.cmd(*args), env=self.env(), text=True, timeout=timeout,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
        )
        if check and proc.returncode != 0:
            detail = (proc.stderr or proc.stdout or "").strip()[-3000:] if capture else ""
            raise ImageError(f"podman {' '.join(args[:3])} ... exited {proc.returncode}: {detail}")
        return proc

    def exists(self, image: str) -> bool:
        return self.run("image", "exists", image, check=False).returncode == 0

    def label(self, image: str, key: str) -> str | None:
        out = self.run("image", "inspect", "--format", f'{{{{index .Labels "{key}"}}}}', image,
                       check=False)
        value = out.stdout.strip() if out.returncode == 0 else ""
        return value if value and value != "<no value>" else None

    def size(self, image: str) -> int:
        return int(self.run("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())

    def build(self, context: Path, tag: str, *, containerfile: Path | None = None,
              build_args: dict[str, str] | None = None, labels: dict[str, str] | None = None,
              stdin_text: str | None = None, host_ca: bool = True) -> None:
        args = ["build", "--format", "docker", "--network=host", "--layers",
                "--signature-policy", str(self.policy), "--pull=never", "-t", tag]
        if host_ca and CA_BUNDLE.is_file():  # outbound TLS is re-signed here: the host's CAs
            args += ["-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"]
        for k, v in (build_args or {}).items():
            args += ["--build-arg", f"{k}={v}"]
        for k, v in (labels or {}).items():
            args += ["--label", f"{k}={v}"]
        args += ["-f", "-" if stdin_text is not None else str(containerfile), str(context)]
        log = self.state / "build.log"
        with open(log, "a") as fh:
            fh.write(f"\n$ podman {' '.join(args)}\n")
            fh.flush()
            proc = subprocess.run(self.cmd(*args), env=self.env(), text=True, input=stdin_text,
                                  stdout=fh, stderr=subprocess.STDOUT, timeout=1200)
        if proc.returncode != 0:
            tail = log.read_text(errors="replace")[-3000:]
            raise ImageError(f"podman build -t {tag} failed ({log}):\n{tail}")
