"""Which gateway a bench measures: this checkout, or ``--gateway-src`` (a directory or a revision).

Nothing edits the import path at run time: a bench given ``--gateway-src`` runs
itself again as a child whose environment puts that source first on
``PYTHONPATH`` (this checkout after it, for ``bench`` and ``tools``) with
``PYTHONSAFEPATH=1``, so that ``python -m`` does not put the working directory
ahead of it. Everything the child imports (the
durable publisher, history reads, frame encoding) and everything it starts (load
clients, the gateway processes) then runs the compared source, as a child process
needs its environment to say anyway.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC_ENV = "BENCH_GATEWAY_SRC"

__all__ = ["SRC_ENV", "export_source", "gateway_src", "rerun_under", "source_env"]


def gateway_src() -> Path:
    """Where the gateway under test is imported from: $BENCH_GATEWAY_SRC or this checkout."""
    return Path(os.environ.get(SRC_ENV) or ROOT)


def export_source(spec: str, tmp: Path) -> Path:
    """``spec`` as a directory: itself, or the revision's ``gateway/`` and ``config/``.

    A revision (e.g. ``HEAD``) measures committed code while the working tree is
    being edited (``git archive``); nothing in the repository is changed.
    """
    src = Path(spec)
    if src.is_dir():
        return src.resolve()
    src = tmp / "gateway-src"
    src.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", spec, "gateway", "config"],
                             check=True, capture_output=True, timeout=60).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True, timeout=60)
    return src.resolve()


def source_env(src: Path, base: Mapping[str, str] = os.environ) -> dict[str, str]:
    """``base`` with the gateway imported from ``src`` by this Python and its children."""
    path = [str(src), str(ROOT)] + [p for p in base.get("PYTHONPATH", "").split(os.pathsep) if p]
    return dict(base, PYTHONPATH=os.pathsep.join(path), PYTHONSAFEPATH="1", **{SRC_ENV: str(src)})


def rerun_under(spec: str | None, module: str, argv: list[str]) -> int | None:
    """``python -m module *argv`` again, under ``spec``; its exit code.

    None (go on in this process) without ``--gateway-src`` or when this process
    is already that child ($BENCH_GATEWAY_SRC set).
    """
    if not spec or os.environ.get(SRC_ENV):
        return None
    tmp = Path(tempfile.mkdtemp(prefix="bench-src-"))
    try:
        src = export_source(spec, tmp)
        print(f"gateway from {src}", file=sys.stderr, flush=True)
        return subprocess.run([sys.executable, "-m", module, *argv], cwd=ROOT,
                              env=source_env(src), check=False).returncode
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
