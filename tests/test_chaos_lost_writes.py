"""The chaos checker on lost writes (tools/chaos: knowledge, losses, checker),
over synthetic logs: an id Redis acknowledged for one event, lost, and gave to the
next one (Redis Cluster replicates asynchronously; a failover or a primary frozen
until its replica took over loses what it had not passed on)."""

from __future__ import annotations

from test_chaos import EPOCH, client, connected, frame, session

from tools.chaos.checker import Settings, check
from tools.chaos.knowledge import Held
from tools.chaos.learning import learn
from tools.chaos.losses import Loss
from tools.chaos.records import ClientLog, Fault, Frame, Published
from tools.chaos.schedule import LOSSY_FAULTS

LOST = ("http0", 2)  # acknowledged with e1:2 at 2.0, then lost by the failover
KEPT = ("lua0", 1)  # acknowledged with e1:2 again at 4.5: Redis holds it


def pub(ident: tuple[str, int], offset: int, at: float) -> Published:
    return Published(ident[0], ident[1], "m1", "stage", None, True, at, at, f"{EPOCH}:{offset}")


PUBLISHED = [pub(("http0", 1), 1, 1.0), pub(LOST, 2, 2.0), pub(KEPT, 2, 4.5),
             pub(("lua0", 2), 3, 5.0)]
HISTORY = {(EPOCH, 1): Held("stage", None, ("http0", 1)), (EPOCH, 2): Held("stage", None, KEPT),
           (EPOCH, 3): Held("stage", None, ("lua0", 2))}


def freeze(profile: str) -> Fault:
    """A primary (or the single Redis) frozen from 2.5 s to 4 s."""
    return Fault("redis_freeze", "redis", 2.5, 4.0, redis=True,
                 lossy="redis_freeze" in LOSSY_FAULTS[profile])


def stage(t: float, offset: int, ident: tuple[str, int]) -> Frame:
    return frame(t, "stage", f"{EPOCH}:{offset}", {"pub": ident[0], "seq": ident[1]})


def resync(t: float) -> Frame:
    return frame(t, "resync", None, {"reason": "redis_reconnected"})


def run(c: ClientLog, faults: list[Fault]) -> tuple[list[str], list[Loss]]:
    losses: list[Loss] = []
    anomalies = check([c], PUBLISHED, faults, {"m1": (EPOCH, 3)}, Settings(), {"m1": HISTORY},
                      losses)
    return [a.kind for a in anomalies], losses


def tab(*frames: Frame) -> ClientLog:
    return client(session([connected(0.5), stage(1.1, 1, ("http0", 1)), *frames], end="final"))


def test_an_id_acknowledged_twice_keeps_both_acks_and_the_first_is_lost() -> None:
    k = learn(PUBLISHED, [], {"m1": HISTORY})["m1"]
    assert [a.ident for a in k.acks[(EPOCH, 2)]] == [LOST, KEPT]
    assert k.ident[(EPOCH, 2)] == KEPT and (EPOCH, 2) not in k.vanished
    [lost] = k.lost[(EPOCH, 2)]
    assert (lost.ident, lost.found, lost.reused, lost.acked) == (LOST, KEPT, True, 2.0)
    assert k.sent_after(EPOCH, 0.0, 4) == [1, 2, 3]  # the offset given twice is owed once
    # without the final history (expired, or another epoch) the last one sent holds the id
    assert learn(PUBLISHED, [], {})["m1"].lost[(EPOCH, 2)][0].found == KEPT


def test_a_freeze_loses_writes_on_the_cluster_profile_only() -> None:
    assert {"cluster_failover", "redis_freeze"} <= LOSSY_FAULTS["cluster"]
    assert LOSSY_FAULTS["single"] == {"redis_restart_lossy"}  # AOF; a SIGTERM writes it out


def test_the_lost_event_then_the_kept_one_after_a_resync_is_no_anomaly() -> None:
    kinds, losses = run(tab(stage(2.1, 2, LOST), resync(4.2), stage(4.6, 2, KEPT),
                            stage(5.1, 3, ("lua0", 2))), [freeze("cluster")])
    assert kinds == []
    [loss] = losses  # counted, with the fault it fell in
    assert loss.write.ident == LOST and loss.fault is not None
    assert loss.fault.kind == "redis_freeze"


def test_a_reused_id_delivered_without_resync_is_an_anomaly() -> None:
    kinds, _ = run(tab(stage(2.1, 2, LOST), stage(4.6, 2, KEPT), stage(5.1, 3, ("lua0", 2))),
                   [freeze("cluster")])
    assert kinds == ["id_reuse"]


def test_the_kept_event_skipped_after_the_lost_one_is_an_anomaly() -> None:
    kinds, _ = run(tab(stage(2.1, 2, LOST), stage(5.1, 3, ("lua0", 2))), [freeze("cluster")])
    assert kinds == ["reuse_missed"]
    # a tab that got neither still owes the kept one: a lost write excuses no gap there
    kinds, _ = run(tab(stage(5.1, 3, ("lua0", 2))), [freeze("cluster")])
    assert kinds == ["gap"]


def test_a_lost_write_no_lossy_fault_explains_is_an_anomaly() -> None:
    """The single profile's Redis keeps acknowledged writes through a freeze."""
    c = tab(stage(2.1, 2, LOST), resync(4.2), stage(4.6, 2, KEPT), stage(5.1, 3, ("lua0", 2)))
    kinds, losses = run(c, [freeze("single")])
    assert kinds == ["lost_write"]
    assert [x.fault for x in losses] == [None]
