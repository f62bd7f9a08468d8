"""The chaos checker (tools/chaos): its invariant on synthetic frame logs, then a short
seeded run against real processes that must show 0 anomalies (issue 17)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest

from tools.chaos.checker import Settings, check
from tools.chaos.records import ClientLog, Fault, Frame, Published, Session

EPOCH = "e1"


def frame(t: float, event: str, event_id: str | None = None, data: Any = None) -> Frame:
    text = data if isinstance(data, str) else json.dumps(data if data is not None else {})
    return Frame(t, event, event_id, text)


def progress(t: float, offset: int, job: str = "j1", epoch: str = EPOCH) -> Frame:
    return frame(t, "progress", f"{epoch}:{offset}", {"jobId": job, "n": offset})


def session(frames: Sequence[Frame], last: str | None = None, end: str = "reconnect",
            started: float | None = None) -> Session:
    start = frames[0].t - 0.01 if started is None else started
    s = Session(start, last, "header" if last else "", "nginx", 200, list(frames))
    s.ended, s.end = (frames[-1].t if frames else start) + 0.01, end
    return s


def client(*sessions: Session) -> ClientLog:
    return ClientLog("c0", "m1", list(sessions))


def acked(offsets: Sequence[int], event: str = "progress", job: str = "j1",
          epoch: str = EPOCH) -> list[Published]:
    return [Published("p", o, "m1", event, job, True, sent=float(o) / 100, acked=float(o) / 100,
                      id=f"{epoch}:{o}") for o in offsets]


def kinds(c: ClientLog, published: Sequence[Published] = (), faults: Sequence[Fault] = (),
          head: tuple[str, int] | None = None, history: int = 100) -> list[str]:
    anomalies = check([c], list(published), list(faults), {"m1": head}, Settings(history=history))
    return [a.kind for a in anomalies]


def connected(t: float) -> Frame:
    return frame(t, "connected", None, {"merchantId": "m1"})


def test_a_clean_log_across_sessions_has_no_anomaly() -> None:
    first = session([connected(1), progress(2, 1), progress(3, 2)])
    second = session([connected(4), progress(5, 3), progress(6, 4)], last=f"{EPOCH}:2",
                     end="final")
    assert kinds(client(first, second), acked(range(1, 5)), head=(EPOCH, 4)) == []


def test_flags_a_duplicate_across_a_reconnect() -> None:
    first = session([connected(1), progress(2, 1), progress(3, 2)])
    second = session([connected(4), progress(5, 2), progress(6, 3)], last=f"{EPOCH}:2")
    assert kinds(client(first, second), acked(range(1, 4))) == ["duplicate"]


def test_flags_a_gap_without_resync() -> None:
    c = client(session([connected(1), progress(2, 1), frame(3, "stage", f"{EPOCH}:3", "x")]))
    assert kinds(c, acked([1]) + acked([2], event="stage")) == ["gap"]


def test_flags_a_reorder() -> None:
    c = client(session([connected(1), progress(2, 1), progress(3, 3), progress(4, 2)]))
    assert "reorder" in kinds(c, acked(range(1, 4)))


def test_flags_a_resync_no_fault_explains() -> None:
    c = client(session([connected(1), progress(2, 1)]),
               session([connected(30), frame(31, "resync", None, {"reason": "history_gap"})],
                       last=f"{EPOCH}:1"))
    assert kinds(c, acked([1, 2])) == ["unexplained_resync"]
    c = client(session([connected(1), frame(2, "resync", None, {"reason": "redis_reconnected"})]))
    assert kinds(c) == ["unexplained_resync"]


def test_a_resync_after_a_redis_fault_or_a_trimmed_history_is_explained() -> None:
    restart = Fault("redis_restart", "redis", 20.0, 21.0, redis=True, lossy=True)
    c = client(session([connected(1), progress(2, 1)]),
               session([connected(22), frame(23, "resync", None, {"reason": "history_gap"}),
                        progress(24, 1, epoch="e2")], last=f"{EPOCH}:1"))
    assert kinds(c, acked([1]), [restart]) == []
    c = client(session([connected(1), progress(2, 1)]),
               session([connected(30), frame(31, "resync", None, {"reason": "history_gap"})],
                       last=f"{EPOCH}:1"))
    assert kinds(c, acked(range(1, 10)), history=5) == []


def test_a_progress_skipped_for_a_newer_one_of_its_job_is_coalescing_not_a_gap() -> None:
    c = client(session([connected(1), progress(2, 1), progress(3, 3)]))
    assert kinds(c, acked(range(1, 4))) == []
    c = client(session([connected(1), progress(2, 1), progress(3, 3, job="j2")]))
    assert kinds(c, acked([1, 2]) + acked([3], job="j2")) == ["gap"]


def test_events_sent_after_a_fresh_connect_are_owed_and_the_head_at_the_end() -> None:
    late = [Published("p", 1, "m1", "stage", None, True, 5.0, 5.1, f"{EPOCH}:1")]
    c = client(session([connected(1), frame(6, "stage", f"{EPOCH}:2", "b")]))
    assert kinds(c, late + acked([2], event="stage")) == ["gap"]
    c = client(session([connected(1), progress(2, 1)], end="final"))
    assert kinds(c, acked([1, 2]), head=(EPOCH, 2)) == ["missing_at_end"]


def test_a_new_epoch_needs_a_resync_and_plain_events_never_repeat() -> None:
    c = client(session([connected(1), progress(2, 1), progress(3, 1, epoch="e2")]))
    assert kinds(c, acked([1])) == ["epoch_change"]
    c = client(session([connected(1), frame(2, "stage", "abc-1", "x"),
                        frame(3, "stage", "abc-2", "x")]))
    assert kinds(c) == ["plain_repeat"]


# -- the short seeded profile against real processes ---------------------------------

SHORT_SEED = 35  # its plan: Redis restarted without persistence, a worker SIGKILLed,
# a gateway behind nginx SIGTERMed and restarted, Redis frozen, nginx reloaded
SHORT_DURATION = 32.0


@pytest.mark.timeout(180)
async def test_short_seeded_chaos_run_shows_no_anomaly() -> None:
    from tools.chaos.report import summary, write_report
    from tools.chaos.runner import run
    from tools.gateway import REPO_ROOT

    run_dir = REPO_ROOT / ".run" / "chaos" / f"test-single-{SHORT_SEED}"  # kept: logs, report
    result = await run(SHORT_SEED, SHORT_DURATION, "single", 50, run_dir)
    report = run_dir / "report.json"
    write_report(result, report)
    print(summary(result), f"(wall {result.wall_s:.0f}s, report {report})")
    kinds = {f.kind for f in result.faults}
    assert {"redis_restart_lossy", "gw_kill", "gw_term", "redis_freeze"} <= kinds, kinds
    assert sum(1 for p in result.published if p.id) > 500
    assert not result.anomalies, json.dumps(json.loads(report.read_text())["anomalies"][:3],
                                            indent=1)[:8000]
