"""``python -m bench.connect``'s figures, from rows (a run takes ~10 s even at toy size,
so ``make bench`` runs it; this checks what it computes and prints)."""

from __future__ import annotations

import argparse

from bench import connect


def _row(system: str, rate: float, us: float, **extra: object) -> dict:
    return {"system": system, "rate": rate, "us_per_stream": us, "ready": 100, "refused": 0,
            "streams_per_s": rate, "ttff_p50_ms": 1.0, "ttff_p99_ms": 3.0, "ttff_max_ms": 4.0,
            "redis_us_per_stream": 0.0, "idle_cores": 0.01, "client_cpu_s": 0.1,
            "other_cores": 0.0, "sustained": True, **extra}


def test_ratios_are_the_gateways_cpu_per_stream_over_each_other_system_per_rate() -> None:
    rows = [_row("gateway1", 1000, 260.0), _row("aiohttp-floor", 1000, 200.0),
            _row("nchan-memory", 1000, 65.0), _row("gateway1", 1000, 240.0, round=2),
            _row("gateway1", 2000, 300.0), _row("nchan-memory", 2000, 0.0, error="x")]
    q = connect.ratios(rows)
    assert q[1000] == {"aiohttp-floor": 1.25, "nchan-memory": 250 / 65}  # rounds averaged
    assert 2000 not in q  # a failed or empty row gives no ratio


def test_the_report_prints_each_ramp_and_the_ratios() -> None:
    args = argparse.Namespace(merchants=50, duration=1.0, rates=[1000.0], rounds=1)
    rows = [_row("gateway1", 1000, 260.0), _row("aiohttp-floor", 1000, 200.0),
            _row("nchan-memory", 1000, 65.0, sustained=False),
            {"system": "gateway2", "rate": 1000, "error": "RuntimeError: boom"}]
    text = connect.report(rows, args)
    assert "gateway1 CPU per new stream at 1000/s: 1.30x aiohttp-floor's, 4.00x nchan-memory's" \
        in text, text
    assert "not sustained" in text and "ERROR RuntimeError: boom" in text


def test_only_systems_it_knows_are_accepted() -> None:
    a = connect.parse_args(["--systems", "gateway1,nchan-memory,aiohttp-floor", "--rates", "5"])
    assert a.rates == [5.0] and a.systems == ["gateway1", "nchan-memory", "aiohttp-floor"]
    try:
        connect.make_system("naive", None, None, 1)  # type: ignore[arg-type]
    except ValueError as e:
        assert "does not run" in str(e)
    else:
        raise AssertionError("naive accepted")


def test_both_floors_serve_the_first_frame(tmp_path) -> None:
    """The reference systems really stream: aiohttp's web layer and its low-level server."""
    import socket

    from bench.systems import Floor

    for name in (connect.FLOOR, connect.LOW_LEVEL_FLOOR):
        floor = connect.make_system(name, tmp_path, None, 1)
        assert isinstance(floor, Floor) and floor.low_level == (name == connect.LOW_LEVEL_FLOOR)
        floor.start()
        try:
            with socket.create_connection(("127.0.0.1", floor.port), timeout=10) as sock:
                path = floor.path_template.format(i=7)
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                seen = b""
                while b"event: connected" not in seen:
                    chunk = sock.recv(4096)
                    assert chunk, seen
                    seen += chunk
            assert seen.startswith(b"HTTP/1.1 200") and b"text/event-stream" in seen
            assert b'"merchantId":"m7"' in seen
        finally:
            floor.stop()
