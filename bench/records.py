"""Bench records: the rows every bench entry point writes under docs/bench/, stamped.

One stamp for every bench: which bench, when (UTC), the command line, the
commit (and whether ``gateway/`` differed from it), the machine (cores, kernel,
CPU model, Python) and the parameters the run used, defaults included.
``write`` replaces the rows the same bench wrote with the same command line and
keeps every other row, so a run with other options lands beside the default
run's. ``python -m bench.readme`` turns these files into README.md's and the
docs' figures.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["DOCS", "command", "commit", "machine", "read", "stamp", "write"]

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "bench"


def _git(*args: str) -> str:
    try:
        run = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                             timeout=30)
    except OSError:
        return ""
    return run.stdout.strip()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """Where the run happened: cores, kernel, CPU model, Python."""
    return {"cores": os.cpu_count(), "kernel": platform.release(), "cpu_model": _cpu_model(),
            "python": platform.python_version()}


def commit() -> str:
    """The short hash of HEAD (what a run measured, unless ``gateway_modified``)."""
    return _git("rev-parse", "--short", "HEAD")


def command(module: str, argv: Iterable[str]) -> str:
    """The command line a run was started with, as a user would type it."""
    return " ".join([f"python -m {module}", *argv])


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def stamp(bench: str, cmd: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The fields every record row carries."""
    out: dict[str, Any] = {
        "bench": bench,
        "ts": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": cmd, "commit": commit(),
        "gateway_modified": bool(_git("status", "--porcelain", "--", "gateway")),
        "machine": machine()}
    if params is not None:
        out["params"] = {k: _plain(v) for k, v in params.items()}
    return out


def read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write(bench: str, rows: list[dict], path: Path, cmd: str,
          params: Mapping[str, Any] | None = None) -> Path:
    """Replace the rows ``bench`` wrote with the same command line by ``rows``, stamped;
    the path."""
    head = stamp(bench, cmd, params)
    kept = [r for r in read(path) if (r.get("bench"), r.get("command")) != (bench, cmd)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in [*kept, *({**head, **r}
                                                                      for r in rows)]))
    return path
