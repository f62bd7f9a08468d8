"""A load client in its own process, driven one command line at a time, each
answered with one JSON line: every client's answer (:func:`emit`), and the
bench's end of the storm, snapshot and new-stream clients (:class:`ClientProc`;
``bench/pool.py`` drives the trials' clients)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["ClientProc", "emit"]


class ClientProc:
    """The storm client process, driven one command line at a time."""

    def __init__(self, args: list[str], module: str = "bench.storm_client") -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", module, *args],
                                     cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)

    def ask(self, line: str) -> dict:
        self.send(line)
        return self.receive(line)

    def send(self, line: str) -> None:
        """One command, not waiting for its answer (so several clients run it at once)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def receive(self, line: str) -> dict:
        """The answer to the command ``line`` sent last (the client bounds every wait)."""
        assert self.proc.stdout is not None
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError(f"storm client exited ({self.proc.poll()}) after {line!r}")
        return json.loads(answer)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # type: ignore[union-attr]  # EOF: the client quits
                self.proc.wait(30)
            except (subprocess.TimeoutExpired, OSError):
                self.proc.kill()
                self.proc.wait(5)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


def emit(obj: dict) -> None:
    """The client's answer to one command: one JSON line on stdout, flushed."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()
