"""The chaos checker's soundness (tools/chaos), over synthetic logs: each test is a
history the checker let pass before (a review's findings F1-F14), now flagged;
and the histories it must still let pass."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from test_chaos import EPOCH, client, connected, frame, session

from tools.chaos.checker import Settings, check
from tools.chaos.knowledge import Held
from tools.chaos.records import ClientLog, Fault, Frame, Published

E = EPOCH


def ev(t: float, offset: int, event: str = "stage", job: str | None = None, pub: str = "p",
       seq: int | None = None) -> Frame:
    """A durable event whose payload names its publisher and sequence number."""
    data: dict[str, Any] = {"pub": pub, "seq": offset if seq is None else seq}
    if job is not None:
        data["jobId"] = job
    return frame(t, event, f"{E}:{offset}", data)


def pub(offset: int, t: float, event: str = "stage", job: str | None = None, who: str = "p",
        seq: int | None = None, acked: float | None = None) -> Published:
    """A durable publish acknowledged with ``E:offset`` (at ``acked``, else when sent)."""
    return Published(who, offset if seq is None else seq, "m1", event, job, True, t,
                     t if acked is None else acked, f"{E}:{offset}")


def item(offset: int, job: str, event: str = "stage", seq: int | None = None) -> dict[str, Any]:
    """A snapshot's job: its latest event."""
    return {"job": job, "event": event, "id": f"{E}:{offset}",
            "data": {"jobId": job, "pub": "p", "seq": offset if seq is None else seq}}


def resync(t: float, reason: str) -> Frame:
    return frame(t, "resync", None, {"reason": reason})


def run(c: ClientLog, published: Sequence[Published], faults: Sequence[Fault] = (),
        head: tuple[str, int] | None = None, history: dict[Any, Held] | None = None,
        settings: Settings | None = None) -> list[str]:
    anomalies = check([c], list(published), list(faults), {"m1": head}, settings or Settings(),
                      {"m1": history} if history is not None else None)
    return [a.kind for a in anomalies]


def test_f1_a_repeat_in_the_same_session_after_a_blind_resync_is_a_duplicate() -> None:
    pubs = [pub(o, float(o)) for o in range(1, 6)]
    first = session([connected(0.5), ev(1, 1)])
    blind = session([connected(2.0), resync(2.1, "history_gap"), ev(3.1, 3), ev(3.2, 3),
                     ev(4, 4)], last="abc-7")
    assert run(client(first, blind), pubs) == ["duplicate"]
    # no Last-Event-ID, a Redis resync, then what this very stream sent before it
    freeze = Fault("redis_freeze", "redis", 2.5, 3.0, redis=True)
    c = client(session([connected(0.5), ev(1, 1), ev(2, 2), resync(3.1, "redis_reconnected"),
                        ev(3.2, 2), ev(4, 3)]))
    assert run(c, pubs[:3], [freeze]) == ["duplicate"]
    # what an earlier session got stays excused (the process cannot know it)
    again = session([connected(2.0), resync(2.1, "history_gap"), ev(2.2, 1), ev(2.3, 2),
                     ev(3.1, 3)], last="abc-7")
    assert run(client(first, again), pubs[:3]) == []


def test_f8_an_id_again_with_other_data_after_a_resync_needs_a_lost_write() -> None:
    published = [pub(1, 1.0), pub(2, 2.0), pub(3, 3.0)]
    history = {(E, o): Held("stage", None, ("p", o)) for o in (1, 2, 3)}
    freeze = Fault("redis_freeze", "redis", 3.5, 4.0, redis=True)
    c = client(session([connected(0.5), ev(1.1, 1), ev(2.1, 2), resync(4.1, "redis_reconnected"),
                        ev(4.2, 2, seq=3), ev(4.3, 3)], end="final"))
    assert "id_reuse" in run(c, published, [freeze], head=(E, 3), history=history)


def test_f11_a_fresh_connect_without_last_event_id_owes_nothing_sent_before_it() -> None:
    published = [pub(1, 3.0), pub(2, 4.0), pub(3, 11.0)]
    first = session([connected(1.0)], end="error:ServerDisconnectedError")
    second = session([connected(10.0), ev(11.1, 3)], end="final", started=9.9)
    assert run(client(first, second), published, head=(E, 3)) == []
    # what is sent after that connect is owed as before
    missed = session([connected(10.0), ev(12.1, 4)], end="final", started=9.9)
    assert run(client(first, missed), [*published, pub(4, 12.0)], head=(E, 4)) == ["gap"]


def test_f3_an_id_redis_gave_an_unacknowledged_event_is_owed() -> None:
    """e1:2's acknowledged event was lost; Redis' final history holds there an event
    whose publish timed out during the failover (no id, but it happened)."""
    published = [pub(1, 1.0, who="http0", seq=1), pub(2, 2.0, who="http0", seq=2),
                 Published("lua0", 7, "m1", "stage", None, True, 3.0),
                 pub(3, 5.0, who="http0", seq=3)]
    history = {(E, 1): Held("stage", None, ("http0", 1)), (E, 2): Held("stage", None, ("lua0", 7)),
               (E, 3): Held("stage", None, ("http0", 3))}
    failover = Fault("cluster_failover", "redis", 2.5, 4.0, redis=True, lossy=True)
    skipped = client(session([connected(0.5), ev(1.1, 1, pub="http0", seq=1),
                              ev(5.1, 3, pub="http0", seq=3)], end="final"))
    assert run(skipped, published, [failover], head=(E, 3), history=history) == ["gap"]
    stale = client(session([connected(0.5), ev(1.1, 1, pub="http0", seq=1),
                            ev(2.1, 2, pub="http0", seq=2), ev(5.1, 3, pub="http0", seq=3)],
                           end="final"))
    assert run(stale, published, [failover], head=(E, 3), history=history) == ["reuse_missed"]


def test_f7_an_id_must_bring_the_event_it_was_acknowledged_for() -> None:
    published = [pub(1, 1.0), pub(2, 2.0), pub(3, 3.0)]
    history = {(E, o): Held("stage", None, ("p", o)) for o in (1, 2, 3)}
    # e1:2 brings C (acknowledged as e1:3), then e1:3 brings C again: B never came
    twice = client(session([connected(0.5), ev(1.1, 1), ev(3.1, 2, seq=3), ev(3.2, 3)],
                           end="final"))
    assert run(twice, published, head=(E, 3), history=history) == ["wrong_event", "two_ids"]
    # B and C under each other's ids
    swapped = client(session([connected(0.5), ev(1.1, 1), ev(3.1, 2, seq=3), ev(3.2, 3, seq=2)],
                             end="final"))
    assert run(swapped, published, head=(E, 3),
               history=history) == ["wrong_event", "wrong_event"]
    # without the final history, the acknowledgements alone tell
    assert run(swapped, published, head=(E, 3)) == ["wrong_event", "wrong_event"]


def test_f7_an_unacknowledged_event_received_under_a_lost_id_is_a_lost_write() -> None:
    """A failover lost e1:2 (acknowledged for A) and gave the id to U, whose publish
    timed out; the final history no longer reaches e1:2. A tab got U there: the id
    holds U, A was lost (explained by the failover), nothing is wrong."""
    published = [pub(1, 1.0), pub(2, 2.0), Published("lua0", 7, "m1", "stage", None, True, 3.0),
                 pub(3, 5.0)]
    failover = Fault("cluster_failover", "redis", 2.5, 4.0, redis=True, lossy=True)
    c = client(session([connected(0.5), ev(1.1, 1), ev(4.1, 2, pub="lua0", seq=7), ev(5.1, 3)],
                       end="final"))
    losses: list[Any] = []
    anomalies = check([c], published, [failover], {"m1": (E, 3)}, Settings(), None, losses)
    assert [a.kind for a in anomalies] == []
    [loss] = losses
    assert (loss.write.ident, loss.write.found, loss.fault) == (("p", 2), ("lua0", 7), failover)
    # with no lossy fault around, the same receipt shows a lost write no fault explains
    assert run(c, published, head=(E, 3)) == ["lost_write"]


def test_f4_coalescing_needs_the_newer_progress_published_when_the_gap_showed() -> None:
    """j1's progress e1:2 is skipped; the stage at e1:3 shows the gap at 3.05."""
    def published(newer_at: float, event: str = "progress") -> list[Published]:
        return [pub(1, 1.0, "progress", "j1"), pub(2, 2.0, "progress", "j1"),
                pub(3, 3.0, "stage", "j2"), pub(4, newer_at, event, "j1")]

    def tab(*later: Frame) -> ClientLog:
        return client(session([connected(0.5), ev(1.05, 1, "progress", "j1"),
                               ev(3.05, 3, "stage", "j2"), *later], end="final"))

    late = tab(ev(63.05, 4, "progress", "j1"))
    assert run(late, published(63.0), head=(E, 4)) == ["gap"]  # sent 60 s after
    soon = tab(ev(3.1, 4, "progress", "j1"))
    assert run(soon, published(2.5), head=(E, 4)) == []  # queued behind e1:2: coalesced
    # a snapshot long after, holding j1 at an event sent long after the gap showed
    freeze = Fault("redis_freeze", "redis", 62.5, 63.0, redis=True)
    snap = frame(63.2, "snapshot", f"{E}:4", {"jobs": [item(3, "j2"), item(4, "j1")]})
    c = tab(resync(63.1, "redis_reconnected"), snap)
    assert run(c, published(61.0, "stage"), [freeze], head=(E, 4)) == ["gap"]


def test_f10_a_lost_write_needs_a_lossy_fault_within_seconds_of_it() -> None:
    kept = ("lua0", 1)
    published = [pub(1, 1.0, who="http0", seq=1), pub(2, 2.0, who="http0", seq=2),
                 pub(2, 31.0, who="lua0", seq=1)]  # e1:2 acknowledged again 29 s later
    history = {(E, 1): Held("stage", None, ("http0", 1)), (E, 2): Held("stage", None, kept)}
    c = client(session([connected(0.5), ev(1.1, 1, pub="http0", seq=1)]))

    def freeze(start: float) -> Fault:
        return Fault("redis_freeze", "redis", start, start + 1.0, redis=True, lossy=True)

    assert run(c, published, [freeze(31.9)], history=history) == ["lost_write"]
    assert run(c, published, [freeze(4.0)], history=history) == []  # 2 s after the ack


class _Node:
    def __init__(self, port: int) -> None:
        self.port = port


class _Server:
    def freeze(self) -> None:
        pass

    def thaw(self) -> None:
        pass


class _Cluster:
    """Three primaries; ``fails_over``: the frozen one's replica takes over."""

    def __init__(self, fails_over: bool) -> None:
        self.ports = [7001, 7002, 7003]
        self.servers = {p: _Server() for p in self.ports}
        self.fails_over = fails_over

    def primaries(self) -> list[_Node]:
        return [_Node(p) for p in self.ports]

    def wait_healthy(self, timeout: float) -> None:
        if self.fails_over:
            self.ports[0] = 7004


async def test_f10_a_freeze_is_lossy_only_when_its_primary_was_failed_over() -> None:
    from types import SimpleNamespace

    from tools.chaos.faults import FaultRunner
    from tools.chaos.schedule import FaultPlan

    plan = FaultPlan(0.0, "redis_freeze", "redis", 0.01, 0)
    for fails_over in (False, True):
        log: list[Fault] = []
        topo = SimpleNamespace(profile="cluster", cluster=_Cluster(fails_over), redis=None)
        await FaultRunner(topo, (plan,), 0.0, log)._one(plan)  # type: ignore[arg-type]
        [fault] = log
        assert fault.lossy is fails_over, fault
        assert fault.detail.endswith("failed over" if fails_over else "no failover")


def test_f5_a_trimmed_history_counts_only_publishes_that_may_have_run_after_the_id() -> None:
    """The tab resumes 180 s later from e1:20, the newest id; no fault near."""
    acked = [pub(o, 10.0 + o) for o in range(1, 21)]
    first = session([connected(9.0), *[ev(10.05 + o, o) for o in range(1, 21)]])
    later = session([connected(200.0), resync(200.1, "history_gap")], last=f"{E}:20")
    early = Fault("redis_freeze", "redis", 0.5, 3.0, redis=True)

    def unanswered(at: float, n: int = 101, refused: bool = False) -> list[Published]:
        return [Published("http0", 1000 + i, "m1", "stage", None, True, at + i / 1000,
                          refused=refused) for i in range(n)]

    c = client(first, later)
    # 101 publishes without an answer long before e1:20 ran: they trimmed nothing after it
    assert run(c, unanswered(1.0) + acked, [early]) == ["unexplained_resync"]
    # 101 after it (timed out, yet they may have run): the history may be trimmed
    assert run(c, unanswered(100.0) + acked) == []
    # ... unless the publish API answered that it recorded none of them
    assert run(c, unanswered(100.0, refused=True) + acked) == ["unexplained_resync"]


def test_f5_a_refusal_of_the_publish_api_is_told_from_a_lost_answer() -> None:
    from tools.chaos.publishers import refusal

    lost = refusal(503, {"error": "unavailable", "message": "Redis is unavailable"}, 1)
    assert lost is None  # Redis may have run it
    full = refusal(503, {"error": "unavailable", "message": "publish queue full"}, 2)
    assert full is not None and full.ids == [None, None]
    partial = refusal(503, {"error": "redis_oom", "message": "x", "ids": ["e1:4", None]}, 2)
    assert partial is not None and partial.ids == ["e1:4", None]
    assert refusal(502, "<html>bad gateway</html>", 1) is None


def test_f6_a_snapshot_holds_each_jobs_latest_event_at_or_below_its_id() -> None:
    published = [pub(1, 1.0, "progress", "j1"), pub(2, 2.0, "stage", "j2"),
                 pub(3, 3.0, "progress", "j1")]

    def fresh(*jobs: dict[str, Any], sid: int = 3) -> list[str]:
        c = client(session([connected(5.0), frame(5.1, "snapshot", f"{E}:{sid}",
                                                  {"jobs": list(jobs)})], end="final"))
        return run(c, published, head=(E, 3))

    right = (item(2, "j2"), item(3, "j1", "progress"))
    assert fresh(*right) == []
    assert fresh(item(3, "j1", "progress")) == ["snapshot_content"]  # omits j2
    assert fresh(item(1, "j1", "progress"), item(2, "j2")) == ["snapshot_content"]  # stale j1
    assert fresh() == ["snapshot_content"]  # empty: a merchant with no state gets none
    assert fresh(item(2, "j2"), item(9, "j1", "progress")) == ["snapshot_content"]  # past e1:3
    assert fresh(item(3, "j1", "progress"), item(2, "j2")) == ["snapshot_content"]  # order
    assert fresh(item(2, "j2"), item(3, "j1", "progress", seq=1)) == ["snapshot_content"]
    assert fresh(item(2, "j1"), item(3, "j2")) == ["snapshot_content"]  # ids' jobs swapped


def test_f6_a_full_snapshot_may_leave_out_only_jobs_older_than_all_it_holds() -> None:
    published = [pub(o, float(o), "stage", f"j{o}") for o in range(1, 5)]

    def capped(*jobs: dict[str, Any]) -> list[str]:
        c = client(session([connected(5.0), frame(5.1, "snapshot", f"{E}:4",
                                                  {"jobs": list(jobs)})], end="final"))
        return run(c, published, head=(E, 4), settings=Settings(snapshot_jobs=2))

    assert capped(item(3, "j3"), item(4, "j4")) == []
    assert capped(item(2, "j2"), item(4, "j4")) == ["snapshot_content"]  # j3 outranks j2


def test_f6_a_snapshot_id_below_an_event_received_since_the_resync() -> None:
    """e1:5 came live between the resync and the snapshot; the snapshot says e1:3."""
    published = [pub(o, t) for o, t in ((1, 1.0), (2, 2.0), (3, 2.9), (4, 3.0), (5, 4.0))]
    freeze = Fault("redis_freeze", "redis", 2.5, 3.0, redis=True)
    snap = frame(4.2, "snapshot", f"{E}:3", {"jobs": [
        {"job": "j", "event": "stage", "id": f"{E}:3", "data": {}}]})
    c = client(session([connected(0.5), ev(1.1, 1), resync(3.1, "redis_reconnected"),
                        ev(4.1, 5), snap, ev(4.3, 4)], end="final"))
    published[2] = pub(3, 2.9, "stage", "j")
    assert run(c, published, [freeze], head=(E, 5)) == ["snapshot_content", "reorder"]


def test_f2_a_lost_writes_event_still_held_at_the_end_is_missing() -> None:
    """e1:2, acknowledged for (http0, 2) and lost in a failover, is the quiescence
    marker's id now; the tab got the lost event, never the marker, no resync."""
    failover = Fault("cluster_failover", "redis", 2.5, 4.0, redis=True, lossy=True)
    published = [pub(1, 1.0, who="http0", seq=1), pub(2, 2.0, who="http0", seq=2),
                 Published("marker", 0, "m1", "stage", None, True, 10.0, 10.0, f"{E}:2")]
    history = {(E, 1): Held("stage", None, ("http0", 1)), (E, 2): Held("stage", None,
                                                                        ("marker", 0))}
    c = client(session([connected(0.5), ev(1.1, 1, pub="http0", seq=1),
                        ev(2.1, 2, pub="http0", seq=2)], end="final"))
    assert run(c, published, [failover], head=(E, 2), history=history) == ["missing_at_end"]
    # a tab past the final head (its ids went back in the failover), with no resync
    ahead = [*published[:2], pub(3, 2.2, who="http0", seq=3)]
    c = client(session([connected(0.5), ev(1.1, 1, pub="http0", seq=1),
                        ev(2.1, 2, pub="http0", seq=2), ev(2.3, 3, pub="http0", seq=3)],
                       end="final"))
    assert run(c, ahead, [failover], head=(E, 2)) == ["missing_at_end"]


def test_f9_every_tab_holds_the_head_however_its_last_session_ended() -> None:
    published = [pub(o, float(o)) for o in range(1, 6)]
    ok = session([connected(0.5), ev(1.1, 1), ev(2.1, 2)])
    for end, status in (("eof", 200), ("status:503", 503), ("error:ClientConnectorError", None)):
        last = session([connected(2.5)] if status == 200 else [], last=f"{E}:2", end=end,
                       started=2.4)
        last.status = status
        assert run(client(ok, last), published, head=(E, 5)) == ["missing_at_end"], end
    got = session([connected(2.5), ev(3.1, 3), ev(4.1, 4), ev(5.1, 5)], last=f"{E}:2", end="eof")
    assert run(client(ok, got), published, head=(E, 5)) == []


async def test_f9_a_run_that_did_not_converge_is_an_anomaly() -> None:
    from types import SimpleNamespace

    from tools.chaos.checker import not_converged
    from tools.chaos.runner import _quiet

    tabs = [SimpleNamespace(plan=SimpleNamespace(name=f"c{i}", merchant="m1"), last_durable=d,
                            resynced_at=0.0)
            for i, d in enumerate([f"{E}:5", f"{E}:4"])]
    assert await _quiet(tabs, {"m1": (E, 5)}, 10.0, 0.2) == ["c1"]  # type: ignore[arg-type]
    assert [a.kind for a in not_converged(["c1"], 1.0)] == ["not_converged"]
    tabs[1].last_durable = f"{E}:5"
    assert await _quiet(tabs, {"m1": (E, 5)}, 10.0, 0.2) == []  # type: ignore[arg-type]
    assert not_converged([], 1.0) == []


async def test_a_tab_told_resync_after_the_markers_began_has_converged() -> None:
    """Found by the 32-s run in `make test`: a tab reconnected with another process's
    plain id 10 ms after its merchant's marker was published. Its stream got
    `resync` (the promise's other answer) and, the run being over, no event after
    it: not a laggard. A resync before the markers began excuses nothing."""
    from types import SimpleNamespace

    from tools.chaos.runner import _quiet

    tab = SimpleNamespace(plan=SimpleNamespace(name="c14", merchant="m1"),
                          last_durable=f"{E}:3", resynced_at=10.5)
    assert await _quiet([tab], {"m1": (E, 5)}, 10.0, 0.2) == []  # type: ignore[list-item]
    tab.resynced_at = 9.5
    assert await _quiet([tab], {"m1": (E, 5)}, 10.0, 0.2) == ["c14"]  # type: ignore[list-item]


def test_f13_an_event_received_under_its_id_and_as_a_plain_event_is_a_copy() -> None:
    published = [pub(1, 1.0), pub(2, 2.0), pub(3, 3.0)]
    again = frame(2.5, "stage", "4f2a-17", {"pub": "p", "seq": 2})  # e1:2's event, plain
    c = client(session([connected(0.5), ev(1.1, 1), ev(2.1, 2), again, ev(3.1, 3)],
                       end="final"))
    assert run(c, published, head=(E, 3)) == ["plain_copy"]
    # the other way round, across sessions
    first = session([connected(0.5), ev(1.1, 1), again])
    later = session([connected(2.6), ev(2.7, 2), ev(3.1, 3)], last=f"{E}:1", end="final")
    assert run(client(first, later), published, head=(E, 3)) == ["plain_copy"]


def test_f14_a_shutdown_through_nginx_needs_a_sigterm_of_a_gateway_behind_it() -> None:
    s = session([connected(1), ev(2, 1), frame(6, "shutdown", None, {"reason": "shutdown"})],
                entry="nginx")
    workers = Fault("gw_term", "workers", 5.0, 5.5, sigterm=True)
    assert run(client(s), [pub(1, 1.5)], [workers]) == ["unexplained_shutdown"]
    gw2 = Fault("gw_term", "gw-2", 5.0, 5.5, sigterm=True)
    assert run(client(s), [pub(1, 1.5)], [gw2]) == []


def test_f12_the_record_tells_a_changed_checker_and_keeps_every_run(tmp_path: Any) -> None:
    import json
    import subprocess

    from tools.chaos import record

    repo = tmp_path / "repo"
    (repo / "tools" / "chaos").mkdir(parents=True)
    (repo / "gateway").mkdir()
    (repo / "tools" / "chaos" / "excuses.py").write_text("lost_before_s = 3.0\n")
    (repo / "gateway" / "x.py").write_text("x = 1\n")

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@x",
                        *args], check=True, capture_output=True)

    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "base")
    (repo / "tools" / "chaos" / "excuses.py").write_text("lost_before_s = 1e9\n")

    def report(anomalies: int, t0: str) -> Any:
        path = repo / ".run" / f"{t0}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps({
            "summary": f"chaos: seed 1, 10 events, 5 clients, 1 faults, {anomalies} anomalies",
            "replay": "python -m tools.chaos --seed 1 --duration 60", "profile": "single",
            "seed": 1, "duration_s": 60.0, "wall_s": 70.0, "t0_utc": t0,
            "events": {"published": 10, "durable_acked": 9}, "faults": [], "storms": [],
            "sessions": {"final": 5}, "frames": {}, "lost_writes": [], "converged": True,
            "anomaly_kinds": {"gap": anomalies} if anomalies else {}}))
        return path

    loose = record.row(report(0, "t1"))
    assert "lost_before_s = 1e9" in loose["checker_diff"] and not loose["gateway_diff"]
    text = record.markdown([loose])
    assert "| single |" not in text and "checker (`tools/chaos/`) differed" in text
    git("checkout", "--", "tools")
    rows = tmp_path / "runs.jsonl"
    failing, passing = record.row(report(3, "t2")), record.row(report(0, "t3"))
    record.add([failing], rows)
    record.add([passing], rows)
    record.add([passing], rows)  # the same report again: its own row
    assert [r["anomalies"] for r in record.read(rows)] == [3, 0]


def test_the_report_counts_a_resync_whose_data_is_not_a_json_object(tmp_path: Any) -> None:
    import json

    from tools.chaos.report import Result, write_report

    c = client(session([connected(1.0), frame(2.0, "resync", None, "not json"),
                        frame(3.0, "resync", None, ["x"]), resync(4.0, "history_gap")]))
    write_report(Result(1, "single", 10.0, [c], [], [], [], 0.0), tmp_path / "r.json")
    frames = json.loads((tmp_path / "r.json").read_text())["frames"]
    assert frames == {"connected": 1, "resync:None": 2, "resync:history_gap": 1}


def test_a_saved_run_is_checked_again_offline(tmp_path: Any, capsys: Any) -> None:
    import json

    from tools.chaos.inputs import Inputs, load, save
    from tools.chaos.recheck import main

    published = [pub(1, 1.0, "progress", "j1"), pub(2, 2.0, "progress", "j1"),
                 Published("lua0", 7, "m1", "stage", None, True, 2.5, refused=True)]
    c = client(session([connected(0.5), ev(1.1, 1, "progress", "j1"),
                        frame(1.5, "stage", "ab-1", "plain"), ev(2.1, 2, "progress", "j1"),
                        ev(2.2, 2, "progress", "j1")], last=None, end="final"))
    freeze = Fault("redis_freeze", "redis", 3.0, 4.0, redis=True, lossy=True, detail="x")
    inputs = Inputs([c], published, [freeze], {"m1": (E, 2)}, Settings(snapshot_jobs=7),
                    {"m1": {(E, 2): Held("progress", "j1", ("p", 2))}},
                    {"m1": {(E, 1): {("progress", "j1")}}}, 0.25, ["c9"], 30.0)
    saved = tmp_path / "report.inputs.json.gz"
    save(inputs, saved)
    assert load(saved) == inputs
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"inputs": saved.name}))
    assert main([str(report)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("chaos recheck: 2 anomalies (1 duplicate, 1 not_converged)"), out
    assert "duplicate m1 c0 s0 f4: e1:2 received again" in out
    other = tmp_path / "old.json"
    other.write_text(json.dumps({"summary": "a report from before inputs were saved"}))
    assert main([str(other)]) == 2
