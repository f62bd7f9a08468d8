"""Build and run the container image with podman, all state under .run/podman.

    python3 -m tools.image build          # `make image`: the image, from the Dockerfile
    python3 -m tools.image base           # only the local Python base (see below)
    python3 -m tools.image env            # shell exports to run podman by hand on this state
    python3 -m tools.image clean          # remove every container, image and layer under .run/

Nothing global changes: ``tools/podman.py`` runs podman on private
configuration and storage under ``.run/podman/``. Deleting ``.run/podman``
(``python3 -m tools.image clean`` does it properly) removes everything.

The Dockerfile is the one users build (``docker build .``), on
``python:3.11-slim``. That image is used when it is already in this storage
(or ``GATEWAY_PYTHON_IMAGE`` names another one present); nothing is ever
pulled. Otherwise a stand-in is built here from Debian packages:
``debootstrap --variant=minbase bookworm`` → ``podman import`` → a small
Containerfile installing python3 (3.11) and python3-venv with a venv first on
``PATH`` (Debian's own pip refuses installs, PEP 668), tagged
``localhost/gateway-python:3.11``. It is cached (about 1-2 minutes the first
time); the Dockerfile's layers are cached too.

Facts this machine needed (docs/deploy.md): runc (the cgroup layout is mixed
v1/v2, crun fails), open-file ulimits below the hard limit, ``--format docker``
(OCI drops HEALTHCHECK), ``--network=host`` for builds and the host's CA
bundle mounted into the build (outbound TLS is re-signed here).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tools.podman import PACKAGES, ImageError, Podman

__all__ = ["DEBIAN_ROOTFS", "IMAGE", "ImageError", "Podman", "build_image", "clean",
           "debian_rootfs", "python_base"]

REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGE = "localhost/event-gateway:latest"
UPSTREAM_PYTHON = "docker.io/library/python:3.11-slim"
LOCAL_PYTHON = "localhost/gateway-python:3.11"
DEBIAN_ROOTFS = "localhost/gateway-debian:bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"

# The stand-in for python:3.11-slim: Debian 12's python3 is 3.11. A venv first
# on PATH gives `python` and a working `pip`, as in the official image.
PYTHON_BASE_CONTAINERFILE = f"""\
FROM {DEBIAN_ROOTFS}
ENV LANG=C.UTF-8
RUN apt-get update -qq \\
 && DEBIAN_FRONTEND=noninteractive \\
    apt-get install -y -qq --no-install-recommends python3 python3-venv \\
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \\
 && python3 -m venv /opt/python \\
 && /opt/python/bin/python -m pip --version
ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CMD ["python3"]
"""


def _log(msg: str) -> None:
    print(f"image: {msg}", file=sys.stderr, flush=True)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _mirror() -> str:
    """The Debian mirror apt already uses here (deb822 or one-line sources)."""
    if m := os.environ.get("DEBIAN_MIRROR"):
        return m
    for path in sorted(Path("/etc/apt").glob("sources.list.d/*.sources")):
        with contextlib.suppress(OSError):
            block: dict[str, str] = {}
            for line in [*path.read_text().splitlines(), ""]:
                if not line.strip():
                    if "bookworm" in block.get("Suites", "").split() and block.get("URIs"):
                        return block["URIs"].split()[0]
                    block = {}
                elif ":" in line and not line.startswith("#"):
                    k, v = line.split(":", 1)
                    block[k.strip()] = v.strip()
    with contextlib.suppress(OSError):
        for line in Path("/etc/apt/sources.list").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[2] == "bookworm":
                return next(p for p in parts[1:] if "://" in p)
    return DEFAULT_MIRROR


# As the official -slim images do: no documentation, manual pages or
# translations, now or in packages installed later.
DPKG_EXCLUDES = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
"""
ROOTFS_RECIPE = _digest("minbase bookworm\n" + DPKG_EXCLUDES)


def slim_rootfs(rootfs: Path) -> None:
    """Drop caches, docs and translations from a debootstrapped tree before it is tarred."""
    (rootfs / "etc/dpkg/dpkg.cfg.d/slim").write_text(DPKG_EXCLUDES)
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "var/cache/debconf",
                 "var/log"):
        for f in (rootfs / junk).rglob("*"):
            if f.is_file() and not f.name.endswith(("lock", "config.dat", "templates.dat")):
                f.unlink()
    for tree in ("usr/share/man", "usr/share/info", "usr/share/lintian"):
        shutil.rmtree(rootfs / tree, ignore_errors=True)
    for doc in (rootfs / "usr/share/doc").glob("*"):
        for f in doc.rglob("*"):
            if f.is_file() and f.name != "copyright":
                f.unlink()
    for loc in (rootfs / "usr/share/locale").glob("*"):
        if loc.is_dir():
            shutil.rmtree(loc, ignore_errors=True)


_DEBOOTSTRAP_ATTEMPTS = 3


def debian_rootfs(podman: Podman) -> None:
    """debootstrap a minimal Debian 12 and import it (the tarball is cached)."""
    if (podman.exists(DEBIAN_ROOTFS)
            and podman.label(DEBIAN_ROOTFS, "gateway.rootfs") == ROOTFS_RECIPE):
        return
    if shutil.which("debootstrap") is None:
        raise ImageError("debootstrap not installed: apt-get install --no-install-recommends "
                         + " ".join(PACKAGES))
    cache = podman.state / "cache"
    tarball = cache / f"bookworm-minbase-{ROOTFS_RECIPE}.tar"
    if not tarball.is_file():
        rootfs = cache / "bookworm-rootfs"
        mirror = _mirror()
        _log(f"debootstrap --variant=minbase bookworm from {mirror} (once; ~1 min) ...")
        t0 = time.monotonic()
        log = podman.state / "debootstrap.log"
        for attempt in range(1, _DEBOOTSTRAP_ATTEMPTS + 1):  # a mirror's download can fail
            shutil.rmtree(rootfs, ignore_errors=True)
            with open(log, "w") as fh:
                rc = subprocess.run(
                    ["debootstrap", "--variant=minbase", "bookworm", str(rootfs), mirror],
                    stdout=fh, stderr=subprocess.STDOUT, timeout=1200,
                    env={**os.environ, "LC_ALL": "C"},
                ).returncode
            if rc == 0 or "Couldn't download" not in log.read_text(errors="replace"):
                break
            _log(f"debootstrap: a download failed (attempt {attempt}); trying again")
            time.sleep(5)  # a backoff: the mirror's hiccup may last a moment
        if rc != 0:
            shutil.rmtree(rootfs, ignore_errors=True)
            raise ImageError(f"debootstrap failed ({log}): "
                             + log.read_text(errors="replace")[-2000:])
        slim_rootfs(rootfs)
        partial = tarball.with_suffix(".tar.partial")
        subprocess.run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."],
                       check=True)
        partial.rename(tarball)
        shutil.rmtree(rootfs, ignore_errors=True)
        _log(f"debootstrap done in {time.monotonic() - t0:.0f}s")
    podman.run("import", "--change", 'CMD ["/bin/bash"]', "--change",
               f"LABEL gateway.rootfs={ROOTFS_RECIPE}", str(tarball), DEBIAN_ROOTFS)


def python_base(podman: Podman) -> str:
    """The image the Dockerfile builds FROM: python:3.11-slim if present, else the stand-in."""
    wanted = os.environ.get("GATEWAY_PYTHON_IMAGE")
    for candidate in ([wanted] if wanted else []) + [UPSTREAM_PYTHON, "python:3.11-slim"]:
        if podman.exists(candidate):
            return candidate
    if wanted:
        raise ImageError(f"GATEWAY_PYTHON_IMAGE={wanted} is not in {podman.state}/storage "
                         "(nothing is pulled)")
    digest = _digest(ROOTFS_RECIPE + PYTHON_BASE_CONTAINERFILE)
    if podman.exists(LOCAL_PYTHON) and podman.label(LOCAL_PYTHON, "gateway.base") == digest:
        return LOCAL_PYTHON
    debian_rootfs(podman)
    _log(f"building {LOCAL_PYTHON} (python3 + venv from Debian packages) ...")
    t0 = time.monotonic()
    podman.build(podman.state, LOCAL_PYTHON, stdin_text=PYTHON_BASE_CONTAINERFILE,
                 labels={"gateway.base": digest}, host_ca=False)  # apt: plain HTTP
    _log(f"{LOCAL_PYTHON} built in {time.monotonic() - t0:.0f}s")
    return LOCAL_PYTHON


def build_image(podman: Podman | None = None, tag: str = IMAGE,
                dockerfile: Path | None = None, context: Path = REPO_ROOT) -> str:
    """Build the Dockerfile as `tag` (on python_base()); return the tag."""
    podman = podman or Podman()
    podman.check()
    base = python_base(podman)
    dockerfile = dockerfile or context / "Dockerfile"
    _log(f"building {tag} from {dockerfile} on {base} ...")
    t0 = time.monotonic()
    podman.build(context, tag, containerfile=dockerfile, build_args={"PYTHON_IMAGE": base})
    _log(f"{tag} built in {time.monotonic() - t0:.0f}s, {podman.size(tag) / 1e6:.0f} MB")
    return tag


def clean(podman: Podman | None = None) -> None:
    """Every container and image in our storage, then the state directory itself."""
    podman = podman or Podman()
    if not podman.state.exists():
        return
    if shutil.which("podman") is not None and podman.conf.exists():
        podman.run("rm", "--all", "--force", check=False)
        podman.run("rmi", "--all", "--force", check=False)
    # overlay mounts left by a killed podman would make rmtree fail
    for line in Path("/proc/self/mounts").read_text().splitlines()[::-1]:
        target = line.split()[1]
        if target.startswith(str(podman.state) + "/"):
            subprocess.run(["umount", "-l", target], check=False)
    shutil.rmtree(podman.state, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("build", "base", "env", "clean"))
    parser.add_argument("--tag", default=IMAGE)
    parser.add_argument("--dockerfile", type=Path)
    args = parser.parse_args(argv)
    podman = Podman()
    try:
        if args.command == "env":
            podman.write_config()
            for k, v in podman.env().items():
                if k not in os.environ or os.environ[k] != v:
                    print(f"export {k}={v}")
            print("# then e.g.: podman images; podman run --rm --network=host " + IMAGE)
        elif args.command == "clean":
            clean(podman)
        elif args.command == "base":
            podman.check()
            print(python_base(podman))
        else:
            t0 = time.monotonic()
            tag = build_image(podman, args.tag, args.dockerfile)
            print(f"{tag}: {podman.size(tag) / 1e6:.0f} MB, built in "
                  f"{time.monotonic() - t0:.0f}s (podman storage: {podman.state})")
    except ImageError as e:
        print(f"image: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
