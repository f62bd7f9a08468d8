"""What `make run` installs: only what it runs, never the test toolchain.

tools/bootstrap.sh is run as an unprivileged user on a PATH that holds none of
the tools it looks for, so it lists every system package its profile would
install (as non-root it installs nothing; it prints the apt-get line). The
`run` profile (`make run`) must name Redis and PostgreSQL and nothing of the
test toolchain; the `test` profile, on the same PATH, names that toolchain, so
the check is not vacuous. Files it looks for outside PATH (PostgreSQL's and
nchan's install directories) are whatever this machine has.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
BOOTSTRAP = REPO_ROOT / "tools" / "bootstrap.sh"
TOOLCHAIN = {"chromium", "chromium-driver", "nginx", "libnginx-mod-nchan", "prometheus",
             "nodejs", "npm", "podman", "runc", "debootstrap", "slirp4netns", "openssl"}
RUN_ONLY = {"redis-server", "redis-tools", "postgresql", "make", "python3-venv"}


def _missing(profile: str, bare_path: Path) -> set[str]:
    """The packages bootstrap.sh `profile` says it would install, as user nobody."""
    result = subprocess.run(
        ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         "/bin/bash", str(BOOTSTRAP), profile],
        env={"PATH": str(bare_path), "HOME": "/nonexistent"},
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 0, result.stderr
    found = re.search(rf"missing system packages \({profile}\): (.*)", result.stderr)
    assert found, result.stderr
    return set(found.group(1).split())


@pytest.fixture
def bare_path() -> Iterator[Path]:
    """A PATH with only the commands bootstrap.sh itself runs (in /tmp: pytest's own
    temporary directories are private to root)."""
    with tempfile.TemporaryDirectory(prefix="bare-path-", dir="/tmp") as name:
        path = Path(name)
        path.chmod(0o755)
        for tool in ("id", "dirname", "grep", "tail"):
            (path / tool).symlink_to(f"/usr/bin/{tool}")
        yield path


def test_make_run_installs_only_what_it_runs(bare_path: Path) -> None:
    run = _missing("run", bare_path)
    assert {"redis-server", "redis-tools", "make"} <= run
    assert run <= RUN_ONLY, run - RUN_ONLY
    test = _missing("test", bare_path)
    assert {"chromium", "prometheus", "nodejs", "npm", "podman", "openssl"} <= test
    assert not run & TOOLCHAIN


def test_make_run_uses_the_run_profile_and_the_gateway_extras_only() -> None:
    dry = subprocess.run(["make", "-n", "-B", "run"], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=30, check=False)
    assert dry.returncode == 0, dry.stderr
    assert "tools/bootstrap.sh run" in dry.stdout
    assert "tools/bootstrap.sh test" not in dry.stdout
    assert "pip install" in dry.stdout and ".[test]" not in dry.stdout
