"""Regressions for what chaos runs found, each forced deterministically by
`python -m tools.chaos.repro` (a lagging link widens the window to hundreds of
milliseconds): it exits 1 while the behaviour reproduces, 0 once fixed.

- head: a reconnect joined a history-head check sent before its own event was
  published, got `resync` for an id the history holds, then that event again;
- late-resync: a reconnect with a trimmed id got the live events queued while
  the history was read before its `resync`;
- moved: after a Redis Cluster failover, the first envelope check, snapshot read
  and history read of a moved merchant failed with MOVED (its streams lost
  their snapshot, a reconnect its replay).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tools.gateway import REPO_ROOT, child_env

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("scenario", ["head", "late-resync", "moved"])
def test_the_scenario_no_longer_reproduces(scenario: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tools.chaos.repro", scenario], cwd=REPO_ROOT, env=child_env(),
        capture_output=True, text=True, timeout=100,
    )
    assert done.returncode == 0, f"{scenario} reproduces:\n{done.stdout}\n{done.stderr[-2000:]}"
    assert "not reproduced" in done.stdout
