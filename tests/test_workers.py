"""gateway.workers: a dead worker is respawned after a capped exponential backoff (unit)."""

from __future__ import annotations

import itertools
import signal
from pathlib import Path
from typing import Any

import pytest

from gateway import workers
from gateway.serve import EXIT_CANNOT_START


class _Crashing:
    """A worker process that has already exited with `code`."""

    def __init__(self, argv: list[str], env: dict[str, str], code: int = 1) -> None:
        self.code = code
        self.signals: list[int] = []
        self.pid = 4242

    def poll(self) -> int:
        return self.code

    def send_signal(self, signum: int) -> None:
        self.signals.append(signum)


def test_the_backoff_doubles_from_one_second_up_to_thirty() -> None:
    assert [workers.respawn_delay_s(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_a_crash_loop_is_respawned_ever_more_slowly(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    spawned: list[float] = []

    def popen(argv: list[str], env: dict[str, str]) -> Any:
        spawned.append(now[0])
        return _Crashing(argv, env)

    monkeypatch.setattr(workers.subprocess, "Popen", popen)
    monkeypatch.setattr(workers.time, "monotonic", lambda: now[0])
    pool = workers._Workers([], "/nonexistent")
    pool.spawn(0)
    while now[0] < 100:
        pool.check()
        now[0] += 0.2
    gaps = [b - a for a, b in itertools.pairwise(spawned)]
    for gap, delay in zip(gaps, [1, 2, 4, 8, 16, 30, 30], strict=False):
        assert delay <= gap <= delay + 0.5  # plus the ticks that notice the exit
    assert len(spawned) < 10  # 100 s of a crash loop: a handful of starts, not 500


def test_a_worker_that_ran_a_while_starts_the_backoff_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [0.0]
    procs: list[_Crashing] = []

    def popen(argv: list[str], env: dict[str, str]) -> Any:
        procs.append(_Crashing(argv, env, code=None))  # type: ignore[arg-type]
        return procs[-1]

    monkeypatch.setattr(workers.subprocess, "Popen", popen)
    monkeypatch.setattr(workers.time, "monotonic", lambda: now[0])
    pool = workers._Workers([], "/nonexistent")
    pool.spawn(0)
    pool._crashes[0] = 5  # it crash-looped before this run
    now[0] = 120.0
    procs[-1].code = 1
    pool.check()
    assert pool._respawn_at[0] == pytest.approx(121.0)


def test_a_worker_that_cannot_start_stops_them_all(monkeypatch: pytest.MonkeyPatch) -> None:
    codes = iter([None, EXIT_CANNOT_START])
    monkeypatch.setattr(
        workers.subprocess, "Popen", lambda argv, env: _Crashing(argv, env, next(codes))
    )
    pool = workers._Workers([], "/nonexistent")
    pool.spawn(0)
    pool.spawn(1)
    pool.check()
    assert pool.stopping and pool.procs[0].signals  # type: ignore[attr-defined]


def test_a_dead_workers_gauges_leave_the_sum(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Its `live*` gauge files (open streams, max_connections, redis_up) are removed:
    they were summed for good, so /metrics said redis_up 0 and 3x max_connections
    after one worker of two died and was respawned."""
    monkeypatch.setattr(workers.subprocess, "Popen", lambda argv, env: _Crashing(argv, env))
    (tmp_path / "gauge_livesum_4242.db").write_bytes(b"")
    (tmp_path / "gauge_livemin_4242.db").write_bytes(b"")
    (tmp_path / "counter_4242.db").write_bytes(b"")  # counters keep counting what it did
    pool = workers._Workers([], str(tmp_path))
    pool.spawn(0)
    pool.check()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter_4242.db"]


def test_sigterm_while_starting_spawns_no_more_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[int] = []

    def popen(argv: list[str], env: dict[str, str]) -> Any:
        started.append(1)
        if len(started) == 2:  # SIGTERM arrives while the second one starts
            pool_forward(signal.SIGTERM, None)
        return _Crashing(argv, env, code=None)  # type: ignore[arg-type]

    monkeypatch.setattr(workers.subprocess, "Popen", popen)
    monkeypatch.setattr(workers._Workers, "wait_all", lambda self, timeout: 0)
    monkeypatch.setattr(workers.signal, "signal", lambda signum, handler: None)
    forwards: list[Any] = []
    real_init = workers._Workers.__init__

    def init(self: Any, argv: list[str], metrics_dir: str) -> None:
        real_init(self, argv, metrics_dir)
        forwards.append(self.forward)

    monkeypatch.setattr(workers._Workers, "__init__", init)

    def pool_forward(signum: int, frame: object) -> None:
        forwards[0](signum, frame)

    assert workers.supervise([], 16, 1.0) == 0
    assert len(started) == 2


def test_a_worker_waiting_to_be_respawned_does_not_fail_a_clean_drain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGTERM while one worker waits out its backoff: the other drains and exits 0,
    so the supervisor exits 0 (it exited 1 with the long-dead worker's code)."""

    class _Draining(_Crashing):
        def poll(self) -> int | None:  # type: ignore[override]
            return 0 if self.signals else None

        def wait(self, timeout: float | None = None) -> int:
            return 0

    class _Killed(_Crashing):
        def wait(self, timeout: float | None = None) -> int:
            return self.code

    made = iter([lambda a, e: _Killed(a, e, -9), _Draining])
    monkeypatch.setattr(workers.subprocess, "Popen", lambda argv, env: next(made)(argv, env))
    pool = workers._Workers([], "/nonexistent")
    pool.spawn(0)
    pool.spawn(1)
    pool.check()  # worker 0 died: respawn pending
    pool.forward(signal.SIGTERM, None)
    assert pool.procs[1].signals == [signal.SIGTERM]  # type: ignore[attr-defined]
    assert pool.wait_all(1.0) == 0
