"""The process side of hostile_support.LivenessProbe: GET /health/live in a loop.

    python -I tests/liveness_probe.py PORT INTERVAL TIMEOUT

Standard library only, in a process of its own: the test process that floods the
gateway meanwhile holds its GIL for milliseconds at a time, and a probe thread in
it measured those waits, not the gateway. Prints one line per probe on stdout:

    ready                     after one warm-up probe (not a sample)
    ok SECONDS                a 200
    fail SECONDS REPR         anything else (SECONDS = TIMEOUT when nothing came)

and stops, after the probe under way, when its stdin reaches EOF.
"""

from __future__ import annotations

import re
import socket
import sys
import threading
import time

_STATUS_200 = re.compile(rb"HTTP/\d(?:\.\d)? 200[ \r]")
_REQUEST = b"GET /health/live HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n"


def probe_once(port: int, timeout: float) -> tuple[float, str | None]:
    """(seconds until the status line, None for a 200 or what came instead)."""
    started = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(_REQUEST)
            head = b""
            while b"\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                head += chunk
    except OSError as exc:
        return timeout, repr(exc)
    elapsed = time.monotonic() - started
    return elapsed, None if _STATUS_200.match(head) else repr(head[:80])


def main(port: int, interval: float, timeout: float) -> None:
    stop = threading.Event()

    def watch_stdin() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    probe_once(port, timeout)  # warm-up: this process's own first connection
    print("ready", flush=True)
    while not stop.is_set():
        elapsed, failure = probe_once(port, timeout)
        line = f"ok {elapsed:.6f}" if failure is None else f"fail {elapsed:.6f} {failure}"
        print(line, flush=True)
        stop.wait(interval)


if __name__ == "__main__":
    main(int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]))
