"""The chaos checker's soundness (tools/chaos), continued over synthetic logs: a second
review's findings (R1-R10), each a history the checker got wrong before (an anomaly
it missed, one it made up, or a crash), and the histories it must still get right."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from test_chaos import EPOCH, client, connected, frame, session
from test_chaos_soundness import ev, item, pub, resync

from tools.chaos.checker import Settings, check
from tools.chaos.knowledge import Held
from tools.chaos.losses import Loss
from tools.chaos.records import ClientLog, Fault, Published

E = EPOCH


def unacked(who: str, seq: int, t: float, event: str = "stage",
            job: str | None = None) -> Published:
    """A durable publish left without an answer (it may have run)."""
    return Published(who, seq, "m1", event, job, True, t)


def run(clients: ClientLog | Sequence[ClientLog], published: Sequence[Published],
        faults: Sequence[Fault] = (), head: tuple[str, int] | None = None,
        history: dict[Any, Held] | None = None, losses: list[Loss] | None = None,
        seen: dict[Any, Any] | None = None) -> list[tuple[str, str]]:
    """(kind, client) of each anomaly."""
    tabs = [clients] if isinstance(clients, ClientLog) else list(clients)
    anomalies = check(tabs, list(published), list(faults), {"m1": head}, Settings(),
                      {"m1": history} if history is not None else None, losses,
                      {"m1": seen} if seen is not None else None)
    return [(a.kind, a.client) for a in anomalies]


def named(name: str, c: ClientLog) -> ClientLog:
    c.name = name
    return c


def test_r7_odd_snapshot_ids_and_deeply_nested_data_are_reported_not_a_crash() -> None:
    published = [pub(1, 1.0, "stage", "j1")]
    for odd in (1, [1], {"a": 1}, None):
        snap = frame(2.0, "snapshot", f"{E}:1", {"jobs": [{"job": "j1", "event": "stage",
                                                           "id": odd, "data": {}}]})
        assert run(client(session([connected(1.0), snap])), published) == [
            ("snapshot_content", "c0")], odd
    deep = frame(1.5, "stage", f"{E}:1", "[" * 100000 + "]" * 100000)
    assert deep.payload() is None
    assert run(client(session([connected(1.0), deep])), published) == []


def test_r1_the_event_sent_last_holds_an_id_given_twice_not_the_last_answered() -> None:
    """A primary frozen until its replica took over runs A (sent before B) when it thaws,
    at 6.0, then loses it: the replica had given e1:2 to B (acknowledged at 4.6). The
    final history no longer reaches e1:2. B holds it; A was lost."""
    freeze = Fault("redis_freeze", "redis", 3.5, 8.0, redis=True, lossy=True)
    history = {(E, 3): Held("stage", None, ("http0", 3))}

    def tabs() -> list[ClientLog]:
        good = client(session([connected(0.5), ev(1.1, 1, pub="http0", seq=1),
                               ev(4.7, 2, pub="http0", seq=2), ev(7.2, 3, pub="http0", seq=3)],
                              end="final"))
        kept = client(session([connected(0.5), ev(1.1, 1, pub="http0", seq=1),
                               ev(6.0, 2, pub="lua2", seq=7), ev(7.2, 3, pub="http0", seq=3)],
                              end="final"))
        return [named("good", good), named("kept_lost", kept)]

    rest = [pub(1, 1.0, who="http0", seq=1), pub(2, 4.5, who="http0", seq=2, acked=4.6),
            pub(3, 7.0, who="http0", seq=3, acked=7.1)]
    # A's publish timed out (a tab's receipt at the thaw is all that tells it ran) ...
    losses: list[Loss] = []
    assert run(tabs(), [*rest, unacked("lua2", 7, 3.0)], [freeze], (E, 3), history,
               losses) == [("reuse_missed", "kept_lost")]
    [loss] = losses
    assert (loss.write.ident, loss.write.found, loss.fault) == (("lua2", 7), ("http0", 2), freeze)
    # ... or its answer came at the thaw, after B's
    assert run(tabs(), [*rest, pub(2, 3.0, who="lua2", seq=7, acked=6.0)], [freeze], (E, 3),
               history) == [("reuse_missed", "kept_lost")]


def test_r3_a_receipt_under_the_wrong_id_is_no_acknowledgement_of_it() -> None:
    """U's publish timed out but ran: Redis' final history holds it at e1:3. A tab got it
    under e1:2, W's id; a freeze around could have lost W, but U ran once, at e1:3."""
    freeze = Fault("redis_freeze", "redis", 2.0, 5.0, redis=True, lossy=True)
    published = [pub(1, 1.0, who="http0", seq=1), pub(2, 2.0, who="http0", seq=2),
                 unacked("lua2", 7, 2.5)]
    history = {(E, 1): Held("stage", None, ("http0", 1)), (E, 2): Held("stage", None, ("http0", 2)),
               (E, 3): Held("stage", None, ("lua2", 7))}
    tab = client(session([connected(0.5), ev(1.1, 1, pub="http0", seq=1),
                          ev(3.0, 2, pub="lua2", seq=7), resync(5.5, "redis_reconnected")],
                         end="final"))
    losses: list[Loss] = []
    assert run(tab, published, [freeze], history=history, losses=losses) == [
        ("wrong_event", "c0")]
    assert losses == []
    # the final history trimmed: U under e1:2 in one tab and e1:3 in another; one is wrong
    other = named("c1", client(session([connected(0.5), ev(1.1, 1, pub="http0", seq=1),
                                        ev(2.1, 2, pub="http0", seq=2),
                                        ev(3.0, 3, pub="lua2", seq=7)], end="final")))
    assert run([tab, other], published, [freeze],
               history={(E, 4): Held("stage", None, ("x", 1))}) == [("wrong_event", "c0")]


def test_r5_an_unanswered_newer_progress_was_published_when_it_was_sent() -> None:
    """A slow tab's queue holds P1 (e1:2) and S (e1:3) when P2 (j1's next progress, e1:4,
    sent at 2.2; its publish timed out, yet ran) comes: P1 makes way for it. The tab
    reads S at 10.0, P2 at 10.1."""
    base = [pub(1, 1.0, "progress", "j1"), pub(2, 2.0, "progress", "j1"),
            pub(3, 2.1, "stage", "j2")]

    def tab(at: float) -> ClientLog:
        return client(session([connected(0.5), ev(1.1, 1, "progress", "j1"),
                               ev(10.0, 3, "stage", "j2"),
                               ev(at, 4, "progress", "j1", pub="lua2", seq=9)], end="final"))

    assert run(tab(10.1), [*base, unacked("lua2", 9, 2.2, "progress", "j1")], head=(E, 4)) == []
    # sent only after S showed the gap: it cannot have replaced P1 in the queue
    assert run(tab(10.2), [*base, unacked("lua2", 9, 10.05, "progress", "j1")],
               head=(E, 4)) == [("gap", "c0")]


def test_r2_a_snapshot_read_before_a_failover_may_hold_the_write_it_lost() -> None:
    """A (progress of j1, e1:2) is acknowledged, then lost in a failover; the new primary
    gives e1:2 to B (stage of j2). A snapshot read on the old primary holds j1 at e1:2;
    the resync, then one read on the new primary, j1 at e1:1 and j2 at e1:2."""
    failover = Fault("cluster_failover", "redis", 2.5, 4.0, redis=True, lossy=True)
    published = [pub(1, 1.0, "progress", "j1"), pub(2, 2.0, "progress", "j1"),
                 pub(2, 4.5, "stage", "j2", seq=3)]
    history = {(E, 1): Held("progress", "j1", ("p", 1)), (E, 2): Held("stage", "j2", ("p", 3))}

    def snap(t: float, *items: dict[str, Any]) -> Any:
        return frame(t, "snapshot", f"{E}:2", {"jobs": list(items)})

    def tab(first: dict[str, Any]) -> ClientLog:
        return client(session([connected(2.1), snap(2.2, first), resync(3.0, "redis_reconnected"),
                               snap(4.6, item(1, "j1", "progress", seq=1),
                                    item(2, "j2", seq=3))], end="final"))

    seen = {(E, 1): {("progress", "j1")}, (E, 2): {("stage", "j2")}}
    assert run(tab(item(2, "j1", "progress")), published, [failover], (E, 2), history,
               seen=seen) == []
    # an event no one gave e1:2 is wrong still
    assert run(tab(item(2, "j3", "progress")), published, [failover], (E, 2), history,
               seen=seen) == [("snapshot_content", "c0")]
    # and a job whose latest event is not a lost write's must be there
    late = client(session([connected(4.5), snap(4.6, item(2, "j2", seq=3))], end="final"))
    assert run(late, published, [failover], (E, 2), history,
               seen=seen) == [("snapshot_content", "c0")]


def test_r6_a_progress_may_make_way_for_a_newer_one_later_lost() -> None:
    """A slow tab's P1 (e1:2) makes way for P2 (j1's next progress, e1:4); a failover
    then loses P2 and the new primary gives e1:4 to Q (stage of j3). The tab got S
    (e1:3), P2, the resync it is owed, then Q under e1:4."""
    failover = Fault("cluster_failover", "redis", 2.5, 4.0, redis=True, lossy=True)

    def check_tab(newer_job: str) -> list[tuple[str, str]]:
        published = [pub(1, 1.0, "progress", "j1"), pub(2, 2.0, "progress", "j1"),
                     pub(3, 2.1, "stage", "j2"), pub(4, 2.2, "progress", newer_job),
                     pub(4, 4.5, "stage", "j3", seq=104)]
        history = {(E, 1): Held("progress", "j1", ("p", 1)),
                   (E, 2): Held("progress", "j1", ("p", 2)), (E, 3): Held("stage", "j2", ("p", 3)),
                   (E, 4): Held("stage", "j3", ("p", 104))}
        tab = client(session([connected(0.5), ev(1.1, 1, "progress", "j1"),
                              ev(2.3, 3, "stage", "j2"), ev(2.4, 4, "progress", newer_job),
                              resync(3.0, "redis_reconnected"), ev(4.6, 4, "stage", "j3", seq=104)],
                             end="final"))
        return run(tab, published, [failover], (E, 4), history)

    assert check_tab("j1") == []
    assert check_tab("j9") == [("gap", "c0")]  # another job's progress replaces nothing


def test_r10_a_progress_made_way_then_the_stream_was_cut_before_the_newer_one() -> None:
    """P1 (e1:2) makes way for P2 (j1's next progress, e1:4) in a slow tab's queue; the
    tab reads S (e1:3), then the gateway cuts it before P2 is written out. It resumes
    from e1:3: the replay brings P2."""
    published = [pub(1, 1.0, "progress", "j1"), pub(2, 2.0, "progress", "j1"),
                 pub(3, 2.1, "stage", "j2"), pub(4, 2.2, "progress", "j1"), pub(5, 5.5)]
    first = session([connected(0.5), ev(1.1, 1, "progress", "j1"), ev(5.0, 3, "stage", "j2")],
                    end="error:ClientPayloadError")
    replayed = session([connected(6.0), ev(6.1, 4, "progress", "j1"), ev(6.2, 5)],
                       last=f"{E}:3", end="final")
    assert run(client(first, replayed), published, head=(E, 5)) == []
    # a replay without it: P1 and P2 both skipped
    skipped = session([connected(6.0), ev(6.2, 5)], last=f"{E}:3", end="final")
    assert run(client(first, skipped), published, head=(E, 5)) == [("gap", "c0"), ("gap", "c0")]


def test_r9_a_lost_writes_event_may_come_again_as_plain_after_a_resync() -> None:
    """gw-1 delivers A (e1:2); a failover loses it and gives e1:2 to B. The tab resumes
    on gw-2 from e1:2: resync. gw-2, holding A through the failover, finds e1:2 holds B
    and delivers A as a plain event (docs/publishing.md, The envelope)."""
    failover = Fault("cluster_failover", "redis", 2.5, 4.0, redis=True, lossy=True)
    published = [pub(1, 1.0), pub(2, 2.0), pub(2, 3.5, seq=3)]
    history = {(E, 1): Held("stage", None, ("p", 1)), (E, 2): Held("stage", None, ("p", 3))}
    plain_a = frame(3.9, "stage", "18c3f2a00b-41", {"pub": "p", "seq": 2})
    first = session([connected(0.5), ev(1.1, 1), ev(2.1, 2)])

    def second(*frames: Any) -> Any:
        return session([connected(3.0), *frames, ev(4.0, 2, seq=3)], last=f"{E}:2",
                       started=2.9, end="final")

    def check_tab(*sessions: Any) -> list[tuple[str, str]]:
        return run(client(*sessions), published, [failover], (E, 2), history)

    assert check_tab(first, second(resync(3.01, "history_gap"), plain_a)) == []
    # with no resync between, the tab got A twice
    assert ("plain_copy", "c0") in check_tab(first, second(plain_a, resync(3.95, "history_gap")))
    # an event Redis kept, as a plain event after a resync: a copy
    plain_1 = frame(3.9, "stage", "18c3f2a00b-40", {"pub": "p", "seq": 1})
    assert check_tab(first, second(resync(3.01, "history_gap"), plain_a, plain_1)) == [
        ("plain_copy", "c0")]


def test_r4_a_saved_run_is_checked_again_under_this_checkers_policy(tmp_path: Any) -> None:
    """A run saved while its checker explained a lost write acknowledged 29 s before a
    lossy fault (lost_before_s 30) is checked again with this checkout's rule."""
    import gzip
    import json

    from tools.chaos.inputs import Inputs, load, save
    from tools.chaos.recheck import recheck

    published = [pub(1, 1.0, who="http0", seq=1), pub(2, 2.0, who="http0", seq=2),
                 pub(2, 31.0, who="lua0", seq=1)]
    history = {(E, 1): Held("stage", None, ("http0", 1)), (E, 2): Held("stage", None, ("lua0", 1))}
    c = client(session([connected(0.5), ev(1.1, 1, pub="http0", seq=1)]))
    freeze = Fault("redis_freeze", "redis", 31.9, 32.9, redis=True, lossy=True)
    loose = Settings(history=50, snapshot_jobs=7, lost_before_s=30.0, publish_slack_s=99.0)
    saved = tmp_path / "r.inputs.json.gz"
    save(Inputs([c], published, [freeze], {"m1": None}, loose, {"m1": history}, {}, 0.0), saved)
    inputs = load(saved)
    assert inputs.settings == Settings(history=50, snapshot_jobs=7)  # the run's configuration
    assert inputs.published == published and inputs.faults == [freeze]
    assert [a.kind for a in recheck(inputs)[0]] == ["lost_write"]
    # a version 1 file (records by position, every setting) reads the same
    doc = json.loads(gzip.decompress(saved.read_bytes()))
    old = {**doc, "version": 1, "settings": {**doc["settings"], "lost_before_s": 30.0},
           "published": [list(p.values()) for p in doc["published"]],
           "faults": [list(f.values()) for f in doc["faults"]],
           "clients": [[x["name"], x["merchant"], [list(s.values()) for s in x["sessions"]]]
                       for x in doc["clients"]]}
    saved.write_bytes(gzip.compress(json.dumps(old).encode()))
    assert load(saved) == inputs


def test_r8_unreadable_saved_inputs_exit_2_in_one_line(tmp_path: Any, capsys: Any) -> None:
    import gzip
    import json

    from tools.chaos.inputs import Inputs, save
    from tools.chaos.recheck import main

    good = tmp_path / "good.inputs.json.gz"
    save(Inputs([], [], [], {}, Settings(), {}, {}, 0.0), good)
    raw = good.read_bytes()
    cases = {"truncated": raw[: len(raw) // 2], "not_gzip": b"{}",
             "version": gzip.compress(json.dumps({"version": 99}).encode()),
             "no_seen": gzip.compress(json.dumps(
                 {k: v for k, v in json.loads(gzip.decompress(raw)).items() if k != "seen"}
             ).encode()),
             "a_list": gzip.compress(b"[1, 2]")}
    for name, data in cases.items():
        (tmp_path / f"{name}.inputs.json.gz").write_bytes(data)
        report = tmp_path / f"{name}.json"
        report.write_text(json.dumps({"inputs": f"{name}.inputs.json.gz"}))
        assert main([str(report)]) == 2, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "unreadable saved inputs" in err, (name, err)


# -- seed 2319 (cluster) in miniature: a progress coalesced into a newer one, both lost --

LOST_PUBLISHED = [
    pub(1, 1.0, "stage", "j1", who="lua2"),
    pub(2, 2.0, "progress", "j1", who="lua2"),  # lost
    pub(3, 2.1, "progress", "j1", who="lua2"),  # lost
    pub(2, 2.5, "stage", "j2", who="lua3", seq=1),  # kept under E:2
    pub(3, 2.9, "progress", "j1", who="lua2", seq=4),  # kept under E:3
    pub(4, 3.5, "stage", "j2", who="lua3", seq=2),
]
LOST_HISTORY = {(E, 1): Held("stage", "j1", ("lua2", 1)), (E, 2): Held("stage", "j2", ("lua3", 1)),
                (E, 3): Held("progress", "j1", ("lua2", 4)),
                (E, 4): Held("stage", "j2", ("lua3", 2))}
FAILED_OVER = Fault("redis_freeze", "redis", 1.5, 3.2, redis=True, lossy=True)


def lost_kinds(second: list[Any]) -> list[str]:
    tab = client(session([connected(0.5), ev(1.1, 1, "stage", "j1", pub="lua2")]),
                 session(second, last=f"{E}:1", end="final"))
    return [k for k, _ in run(tab, LOST_PUBLISHED, [FAILED_OVER], (E, 4), LOST_HISTORY)]


def test_a_lost_progress_coalesced_into_a_newer_lost_one_is_no_gap() -> None:
    """A tab resumed from the deposed primary's history (E:2, E:3: progress of j1, both
    lost); its queue kept only the newer one, as coalescing does. The checker called the
    skipped E:2 a gap: the event Redis holds there now (another job's stage) is no
    progress, so its coalescing rule did not apply."""
    assert lost_kinds([connected(2.3), ev(2.31, 3, "progress", "j1", pub="lua2"),
                       resync(3.3, "redis_reconnected"),
                       ev(3.6, 4, "stage", "j2", pub="lua3", seq=2)]) == []


def test_the_kept_event_skipped_before_a_kept_progress_of_its_job_is_still_a_gap() -> None:
    """From the promoted replica's history E:2 is another job's stage, owed to the tab: a
    stand-in Redis kept proves that history (only a lost stand-in proves the old one)."""
    assert lost_kinds([connected(2.3), ev(2.95, 3, "progress", "j1", pub="lua2", seq=4),
                       ev(3.6, 4, "stage", "j2", pub="lua3", seq=2)]) == ["gap"]
