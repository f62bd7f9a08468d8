"""Unit tests of gateway.fanout.hub: event ids, the bounded history ring, attach/replay."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gateway.durable.ids import DurableId
from gateway.fanout.frames import Control, Entry
from gateway.fanout.hub import Hub, process_epoch
from gateway.fanout.verdict import Done, Proven


class Sink:
    """A Subscriber that records what the hub hands it."""

    def __init__(self) -> None:
        self.got: list[Entry | Control] = []

    def deliver(self, entry: Entry | Control) -> None:
        self.got.append(entry)


def wire_id(entry: Entry) -> str:
    """The `id:` field of an entry's frame, as a client would see it."""
    first = bytes(entry.wire[0]).split(b"\n", 1)[0].decode()
    assert first.startswith("id: ")
    return first[len("id: ") :]


def seq_of(event_id: str) -> int:
    return int(event_id.rpartition("-")[2])


def test_ids_increase_and_are_unique_across_merchants() -> None:
    hub = Hub(history=10, epoch="ep0")
    hub.open("a")
    hub.open("b")
    ids = []
    for i in range(50):
        entry = hub.publish("a" if i % 3 else "b", "progress", b"{}")
        assert entry is not None
        ids.append(wire_id(entry))
    assert len(set(ids)) == len(ids)
    assert all(i.startswith("ep0-") for i in ids)
    seqs = [seq_of(i) for i in ids]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)


def test_epoch_is_per_process_and_default() -> None:
    hub = Hub(history=1)
    assert hub.epoch
    assert "-" not in hub.epoch  # the id's last '-' separates epoch and seq
    assert isinstance(process_epoch(), str)


def test_history_is_bounded() -> None:
    hub = Hub(history=5, epoch="e")
    topic = hub.open("m")
    for i in range(20):
        hub.publish("m", "stage", str(i).encode())
    assert len(topic.history) == 5
    assert [e.id for e in topic.history] == [f"e-{seq}" for seq in range(16, 21)]
    assert bytes(topic.history[-1].wire[0]).endswith(b"data: 19\n\n")


def test_only_coalescable_events_keep_their_payload() -> None:
    """A frame is the only copy of an event, except where a lagging stream needs its job id."""
    hub = Hub(history=5, epoch="e", coalesce=frozenset({"progress"}))
    hub.open("m")
    kept = hub.publish("m", "progress", b'{"jobId": "j"}')
    dropped = hub.publish("m", "stage", b'{"jobId": "j"}')
    assert kept is not None and dropped is not None
    assert kept.job("jobId") == "j"
    assert dropped.payload == b"" and dropped.job("jobId") is None


def test_publish_for_unheld_merchant_returns_none() -> None:
    hub = Hub(history=5, epoch="e")
    assert hub.publish("nobody", "progress", b"{}") is None
    assert len(hub) == 0
    assert hub.messages == 0
    # and it consumed no id
    hub.open("m")
    entry = hub.publish("m", "progress", b"{}")
    assert entry is not None and entry.seq == 1


def test_publish_fans_out_to_every_subscriber_of_that_merchant_only() -> None:
    hub = Hub(history=5, epoch="e")
    a1, a2, b = Sink(), Sink(), Sink()
    hub.attach("a", a1, None)
    hub.attach("a", a2, None)
    hub.attach("b", b, None)
    entry = hub.publish("a", "progress", b"x")
    assert a1.got == [entry] and a2.got == [entry]
    assert b.got == []
    assert hub.deliveries == 2


def test_attach_without_id_has_no_replay() -> None:
    hub = Hub(history=5, epoch="e")
    hub.open("m")
    hub.publish("m", "stage", b"1")
    sink = Sink()
    assert hub.attach("m", sink, None) == ([], False)
    assert hub.attach("m", Sink(), "") == ([], False)
    later = hub.publish("m", "stage", b"2")
    assert sink.got == [later]


def test_attach_replays_after_the_id_in_order() -> None:
    hub = Hub(history=10, epoch="e")
    hub.open("m")
    entries = [hub.publish("m", "stage", str(i).encode()) for i in range(6)]
    replay, gap = hub.attach("m", Sink(), wire_id(entries[2]))  # type: ignore[arg-type]
    assert gap is False
    assert replay == entries[3:]
    # the newest id: nothing to replay, no gap
    replay, gap = hub.attach("m", Sink(), wire_id(entries[-1]))  # type: ignore[arg-type]
    assert (replay, gap) == ([], False)


def test_attach_registers_atomically_with_replay() -> None:
    """Everything after the id arrives exactly once: replay, then live."""
    hub = Hub(history=10, epoch="e")
    hub.open("m")
    first = hub.publish("m", "stage", b"1")
    second = hub.publish("m", "stage", b"2")
    sink = Sink()
    replay, _ = hub.attach("m", sink, wire_id(first))  # type: ignore[arg-type]
    live = hub.publish("m", "stage", b"3")
    assert replay + sink.got == [second, live]


@pytest.mark.parametrize(
    "last_id",
    ["garbage", "e-", "e-x", "other-1", "-1", "e-999"],
    ids=["garbage", "no-seq", "non-digit", "foreign-epoch", "no-epoch", "future-seq"],
)
def test_attach_unknown_or_foreign_id_is_a_gap(last_id: str) -> None:
    hub = Hub(history=10, epoch="e")
    hub.open("m")
    hub.publish("m", "stage", b"1")
    hub.publish("m", "stage", b"2")
    sink = Sink()
    assert hub.attach("m", sink, last_id) == ([], True)
    # still attached: goes live
    live = hub.publish("m", "stage", b"3")
    assert sink.got == [live]


def test_attach_evicted_id_is_a_gap() -> None:
    hub = Hub(history=3, epoch="e")
    hub.open("m")
    entries = [hub.publish("m", "stage", str(i).encode()) for i in range(10)]
    assert hub.attach("m", Sink(), wire_id(entries[5])) == ([], True)  # type: ignore[arg-type]
    replay, gap = hub.attach("m", Sink(), wire_id(entries[7]))  # type: ignore[arg-type]
    assert (replay, gap) == (entries[8:], False)


def test_id_of_another_merchant_is_a_gap() -> None:
    hub = Hub(history=10, epoch="e")
    hub.open("a")
    hub.open("b")
    other = hub.publish("b", "stage", b"b")
    hub.publish("a", "stage", b"a")
    assert hub.attach("a", Sink(), wire_id(other)) == ([], True)  # type: ignore[arg-type]


def test_dropped_merchant_forgets_history() -> None:
    hub = Hub(history=10, epoch="e")
    hub.open("m")
    entry = hub.publish("m", "stage", b"1")
    hub.drop("m")
    assert hub.publish("m", "stage", b"2") is None
    assert hub.attach("m", Sink(), wire_id(entry)) == ([], True)  # type: ignore[arg-type]


def test_detach_stops_delivery() -> None:
    hub = Hub(history=10, epoch="e")
    sink = Sink()
    hub.attach("m", sink, None)
    hub.detach("m", sink)
    hub.publish("m", "stage", b"1")
    assert sink.got == []


@pytest.mark.parametrize(
    ("payload", "job"),
    [
        (b'{"jobId": "j1", "pct": 5}', "j1"),
        (b'{"jobId": 42}', "42"),
        (b'{"jobId": true}', None),
        (b'{"jobId": null}', None),
        (b'{"jobId": ["x"]}', None),
        (b'{"jobId": {"a": 1}}', None),
        (b'{"other": "j1"}', None),
        (b'["jobId", "j1"]', None),
        (b'"j1"', None),
        (b"not json", None),
        (b"", None),
        (b"\xff\xfe", None),
    ],
)
def test_entry_job_parsing(payload: bytes, job: str | None) -> None:
    entry = Entry(1, "e-1", "progress", payload)
    assert entry.job("jobId") == job
    assert entry.job("jobId") == job  # cached answer is the same


def test_entry_job_uses_the_configured_key() -> None:
    entry = Entry(1, "e-1", "progress", b'{"jobId": "a", "task": "b"}')
    assert entry.job("task") == "b"


def test_entry_wire_is_plain_and_chunked() -> None:
    entry = Entry(7, "e-7", "progress", b'{"a":1}')
    plain, chunked = entry.wire
    assert plain == b'id: e-7\nevent: progress\ndata: {"a":1}\n\n'
    assert chunked == b"%x\r\n%s\r\n" % (len(plain), plain)


def test_broadcast_reaches_every_subscriber() -> None:
    hub = Hub(history=1, epoch="e")
    a, b = Sink(), Sink()
    hub.attach("a", a, None)
    hub.attach("b", b, None)
    control = Control("shutdown", {"reason": "shutdown"})
    hub.broadcast(control, ["a", "b"])
    assert a.got == [control] and b.got == [control]


def test_resync_reaches_only_the_merchants_named() -> None:
    """A cluster primary failing over resyncs its merchants, not everyone's."""
    hub = Hub(history=10, epoch="e")
    moved, healthy = Sink(), Sink()
    hub.attach("moved", moved, None)
    hub.attach("healthy", healthy, None)
    entry = hub.publish("healthy", "progress", b"1")
    assert entry is not None
    control = Control("resync", {"reason": "redis_reconnected"})
    hub.mark_gap(["moved"])
    hub.broadcast(control, ["moved"])
    assert moved.got == [control] and healthy.got == [entry]
    assert hub.attach("healthy", Sink(), entry.id) == ([], False)  # type: ignore[arg-type]


def test_mark_gap_turns_a_replay_from_before_it_into_a_gap() -> None:
    hub = Hub(history=10, epoch="e")
    hub.open("m1")
    before = hub.publish("m1", "progress", b"1")
    assert before is not None
    hub.mark_gap(["m1"])  # Redis reconnected: messages may have been lost here
    after = hub.publish("m1", "progress", b"2")
    assert after is not None
    assert hub.attach("m1", object(), f"e-{before.seq}") == ([], True)  # type: ignore[arg-type]
    replay, gap = hub.attach("m1", object(), f"e-{after.seq}")  # type: ignore[arg-type]
    assert (replay, gap) == ([], False)


def test_deeply_nested_payload_is_not_coalescible() -> None:
    hub = Hub(history=1, epoch="e")
    hub.open("m1")
    entry = hub.publish("m1", "progress", b"[" * 100_000)
    assert entry is not None and entry.job("jobId") is None


def durable(hub: Hub, offsets: range, epoch: str = "ep") -> list[Entry]:
    """Entries as a history read from Redis gives them to the hub."""
    return [hub.entry("progress", b"%d" % n, f"{epoch}:{n}") for n in offsets]


def ids(entries: list[Entry]) -> list[str]:
    return [e.id for e in entries]


def test_backfill_puts_a_history_read_in_front_of_the_live_ring() -> None:
    hub = Hub(history=10, epoch="local")
    hub.attach("m", Sink(), None)  # the stream whose replay reads the history
    mark = hub.gap_mark("m")
    hub.publish("m", "stage", b"plain")  # live while the read was in flight
    hub.publish("m", "progress", b"5", "ep:5")  # durable, in the read too
    hub.publish("m", "progress", b"6", "ep:6")  # durable, after the read
    assert hub.backfill("m", durable(hub, range(1, 6)), mark) == 4  # 5 was live already
    replay, gap = hub.attach("m", Sink(), "ep:2")
    assert not gap
    assert ids(replay) == ["ep:3", "ep:4", "local-1", "ep:5", "ep:6"]


def test_backfill_fills_only_the_room_left_and_keeps_the_newest() -> None:
    hub = Hub(history=4, epoch="local")
    hub.attach("m", Sink(), None)
    hub.publish("m", "progress", b"9", "ep:9")
    assert hub.backfill("m", durable(hub, range(1, 9)), hub.gap_mark("m")) == 3
    assert hub.attach("m", Sink(), "ep:5")[1]  # not held: Redis must answer it
    assert ids(hub.attach("m", Sink(), "ep:6")[0]) == ["ep:7", "ep:8", "ep:9"]


@pytest.mark.parametrize(
    "case", ["gap_during_read", "ring_before_gap", "other_epoch", "hole", "resubscribed"]
)
def test_backfill_refuses_what_it_cannot_join(case: str) -> None:
    hub = Hub(history=10, epoch="local")
    hub.attach("m", Sink(), None)
    mark = hub.gap_mark("m")
    if case == "gap_during_read":
        hub.mark_gap(["m"])
    elif case == "ring_before_gap":
        hub.publish("m", "progress", b"4", "ep:4")
        hub.mark_gap(["m"])
        mark = hub.gap_mark("m")
    elif case == "other_epoch":
        hub.publish("m", "progress", b"1", "new:1")
    elif case == "resubscribed":  # the read began under the merchant's previous subscription
        hub.drop("m")
        hub.attach("m", Sink(), None)
    else:  # the ring starts past the end of the read: events in between are unknown
        hub.publish("m", "progress", b"9", "ep:9")
    assert hub.backfill("m", durable(hub, range(1, 4)), mark) == 0
    assert hub.attach("m", Sink(), "ep:1")[1]


def shown(entries: list[Entry]) -> list[str]:
    """Ids, with process-local ones (plain events) as "plain"."""
    return ["plain" if e.id.startswith("local-") else e.id for e in entries]


class Checks:
    """A fake `verify`: records each check; the test answers it."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str, Callable[[bool], None]]] = []
        self.expected: list[str | None] = []
        self.proven: list[list[str]] = []  # the ids asked about with each check
        self.missed = False  # what the next answers say of the events skipped
        self.lost_from: DurableId | None = None  # ... and of the proven ones

    def __call__(self, merchant_id: str, durable: DurableId, event: str, payload: bytes,
                 expected: DurableId | None, proven: Proven, done: Done) -> None:
        self.expected.append(str(expected) if expected else None)
        self.proven.append([str(d) for d, _ in proven])
        self.asked.append((str(durable), payload.decode(),
                           lambda genuine: done(genuine, self.missed, self.lost_from)))


def test_only_an_id_that_does_not_continue_the_proven_head_is_checked() -> None:
    checks = Checks()
    hub = Hub(history=10, epoch="local", verify=checks)
    sink = Sink()
    hub.attach("m", sink, None)
    assert hub.publish("m", "stage", b"1", "ep:1") is None  # the first one: checked
    hub.publish("m", "stage", b"plain")  # held behind it, order kept
    hub.publish("m", "stage", b"2", "ep:2")
    assert [a[0] for a in checks.asked] == ["ep:1"] and sink.got == []
    checks.asked[0][2](True)
    assert shown(sink.got) == ["ep:1", "plain", "ep:2"]
    hub.publish("m", "stage", b"3", "ep:3")  # continues: no check
    assert len(checks.asked) == 1 and ids(sink.got)[-1] == "ep:3"


@pytest.mark.parametrize("forged", ["ep:9", "other:1"])
def test_an_envelope_the_history_does_not_hold_goes_out_as_a_plain_event(forged: str) -> None:
    hub, checks, _, sink = proven_at_ep1()
    hub.publish("m", "stage", b"2", "ep:2")
    hub.publish("m", "stage", b"forged", forged)  # a plain PUBLISH imitating the envelope
    hub.publish("m", "stage", b"3", "ep:3")  # real, held behind the check
    assert checks.asked[-1][:2] == (forged, "forged")
    checks.asked[-1][2](False)
    assert shown(sink.got) == ["ep:1", "ep:2", "plain", "ep:3"]
    assert hub.forged == 1
    replay, gap = hub.attach("m", Sink(), sink.got[2].id)  # resuming after the forgery
    assert not gap and ids(replay) == ["ep:3"]


def test_an_event_that_comes_again_after_going_out_here_is_not_sent_twice() -> None:
    """Redis Cluster may bring one message twice across a failover (the deposed
    primary's publish, then the promoted replica's): the copy used to go out as a plain
    event, so every tab got the event twice (chaos cluster seed 2320)."""
    hub, checks, _, sink = proven_at_ep1()
    hub.publish("m", "stage", b"2", "ep:2")
    hub.publish("m", "stage", b"2", "ep:2")  # the same event again
    hub.publish("m", "stage", b"3", "ep:3")  # real, held behind the check
    checks.asked[-1][2](True)
    assert shown(sink.got) == ["ep:1", "ep:2", "ep:3"]
    assert (hub.copies, hub.forged) == (1, 0)
    replay, gap = hub.attach("m", Sink(), "ep:2")
    assert not gap and ids(replay) == ["ep:3"]


@pytest.mark.parametrize("how", ["delivered", "read"])
def test_an_id_the_history_gave_another_event_resyncs_and_keeps_it(how: str) -> None:
    """A failover lost writes the head came from (delivered live, or learnt from a
    read of the deposed primary) and the new primary gave their ids to other
    events: those are genuine, not old ids published again."""
    hub, checks, missed, sink = proven_at_ep1()
    if how == "delivered":
        hub.publish("m", "stage", b"lost", "ep:2")  # continues: no check
    else:
        hub.learn_head("m", DurableId("ep", 2), hub.gap_mark("m"))
    hub.publish("m", "stage", b"2", "ep:2")  # the new primary's ep:2
    checks.asked[-1][2](True)
    hub.publish("m", "stage", b"3", "ep:3")  # continues it: no check
    assert missed == [["m"]] and hub.forged == 0
    assert ids(sink.got)[-2:] == ["ep:2", "ep:3"]
    assert sink.got[-2].wire[0].tobytes().endswith(b"data: 2\n\n")
    assert len(checks.asked) == 2


def head_learnt(history: int, offset: int) -> tuple[Hub, Checks, Sink]:
    """A hub whose merchant "m" learnt head ep:`offset` from a read, one stream attached."""
    checks = Checks()
    hub = Hub(history=history, epoch="local", verify=checks)
    sink = Sink()
    hub.attach("m", sink, None)
    hub.learn_head("m", DurableId("ep", offset), hub.gap_mark("m"))
    return hub, checks, sink


def test_a_copy_in_the_ring_is_dropped_one_older_than_the_ring_goes_out_as_plain() -> None:
    hub, checks, sink = head_learnt(history=2, offset=1)
    for n in (2, 3, 4):
        hub.publish("m", "stage", str(n).encode(), f"ep:{n}")
    hub.publish("m", "stage", b"3", "ep:3")  # in the ring: a copy of what went out here
    checks.asked[-1][2](True)
    hub.publish("m", "stage", b"2", "ep:2")  # before the ring: nothing says otherwise
    checks.asked[-1][2](True)
    assert shown(sink.got) == ["ep:2", "ep:3", "ep:4", "plain"]
    assert (hub.copies, hub.forged) == (1, 1)


def test_a_gap_makes_the_next_envelope_checked_again() -> None:
    checks = Checks()
    hub = Hub(history=10, epoch="local", verify=checks)
    hub.attach("m", Sink(), None)
    hub.publish("m", "stage", b"1", "ep:1")
    checks.asked[0][2](True)
    hub.mark_gap(["m"])
    hub.publish("m", "stage", b"2", "ep:2")
    assert [a[0] for a in checks.asked] == ["ep:1", "ep:2"]


def test_after_a_gap_the_check_asks_after_the_events_delivered_here() -> None:
    """A failover: the new primary gave ep:2 and ep:3 to other events before this process
    subscribed to it, so it never sees them come again. The first check after the gap
    asks whether the history still holds what was delivered here up to the head."""
    hub, checks, missed, sink = proven_at_ep1()
    lost: list[tuple[str, str, str]] = []
    hub._on_lost = lambda m, first, last: lost.append((m, str(first), str(last)))
    for n in (2, 3):  # continue the head: no check
        hub.publish("m", "stage", b"lost %d" % n, f"ep:{n}")
    assert checks.proven == [[]]  # the first check: nothing delivered yet
    hub.mark_gap(["m"])  # the merchant moved to the promoted replica's link
    hub.publish("m", "stage", b"4", "ep:4")
    assert checks.proven[-1] == ["ep:3", "ep:2", "ep:1"]
    checks.lost_from = DurableId("ep", 2)
    checks.asked[-1][2](True)
    assert lost == [("m", "ep:2", "ep:3")] and missed == [["m"]]  # recorded; streams resync
    assert ids(sink.got) == ["ep:1", "ep:2", "ep:3", "ep:4"]
    assert hub.attach("m", Sink(), "ep:3") == ([], True)  # no replay bridges the loss


def test_after_a_gap_events_still_held_as_delivered_continue_without_a_resync() -> None:
    hub, checks, missed, sink = proven_at_ep1()
    hub.mark_gap(["m"])
    hub.publish("m", "stage", b"2", "ep:2")
    assert checks.proven[-1] == ["ep:1"]
    checks.asked[-1][2](True)  # lost_from None: every one is held as delivered
    assert missed == [] and ids(sink.got) == ["ep:1", "ep:2"]
    hub.publish("m", "stage", b"3", "ep:3")  # continues: no check, nothing asked
    assert len(checks.asked) == 2


def proven_at_ep1() -> tuple[Hub, Checks, list[list[str]], Sink]:
    """A hub whose merchant "m" has proven ep:1 (checked), one stream attached, and
    the merchants it reported missed messages of."""
    checks, missed = Checks(), []
    hub = Hub(history=10, epoch="local", verify=checks, on_missed=missed.append)
    sink = Sink()
    hub.attach("m", sink, None)
    hub.publish("m", "stage", b"1", "ep:1")
    checks.asked[0][2](True)
    return hub, checks, missed, sink


def test_a_genuine_jump_past_the_expected_id_resyncs_before_it_is_delivered() -> None:
    """Events the subscriber never received (a failover, a replica resyncing): the
    merchant's streams resync first, and no replay bridges the jump."""
    hub, checks, missed, sink = proven_at_ep1()
    hub.publish("m", "stage", b"2", "ep:2")  # continues: no check
    hub.publish("m", "stage", b"9", "ep:9")  # 3..8 never arrived
    assert checks.expected[-1] == "ep:3"
    checks.missed = True
    checks.asked[-1][2](True)
    assert missed == [["m"]] and ids(sink.got) == ["ep:1", "ep:2", "ep:9"]
    replay, gap = hub.attach("m", Sink(), "ep:2")
    assert gap and replay == []  # ep:2 is from before the loss: the ring cannot bridge it
    missed_before = len(missed)
    hub.publish("m", "stage", b"10", "ep:10")  # continues the new head
    assert len(missed) == missed_before and ids(sink.got)[-1] == "ep:10"


def test_a_jump_over_events_not_subscribed_to_is_no_loss() -> None:
    hub, checks, missed, sink = proven_at_ep1()
    hub.publish("m", "stage", b"3", "ep:3")  # ep:2 is of a type this gateway ignores
    checks.asked[-1][2](True)
    assert missed == [] and ids(sink.got) == ["ep:1", "ep:3"]
    assert ids(hub.attach("m", Sink(), "ep:1")[0]) == ["ep:3"]


def test_a_flushed_history_read_makes_the_next_envelope_need_no_check() -> None:
    hub, checks, sink = head_learnt(history=10, offset=4)
    hub.publish("m", "stage", b"5", "ep:5")
    assert checks.asked == [] and ids(sink.got) == ["ep:5"]
    hub.learn_head("m", DurableId("ep", 3), hub.gap_mark("m"))  # an older read: no step back
    hub.publish("m", "stage", b"6", "ep:6")
    assert checks.asked == [] and ids(sink.got) == ["ep:5", "ep:6"]


def test_a_stream_attached_between_resync_and_live_again_gets_the_resync() -> None:
    """The resync went out before it attached, yet it may have missed the same
    messages (its replay or snapshot was read while Redis was reconnecting): it
    gets the resync once the channels are live again, before the snapshot hold."""
    hub = Hub(history=10)
    early, late, gone, later = Sink(), Sink(), Sink(), Sink()
    hub.attach("m1", early, None)
    hub.resync(["m1"], Control("resync", {"reason": "redis_reconnected"}))
    hub.attach("m1", late, None)
    hub.attach("m1", gone, None)
    hub.detach("m1", gone)
    hub.live_again(["m1"], Control("resync", {"reason": "redis_reconnected"}))
    hub.attach("m1", later, None)
    hub.live_again(["m1"], Control("resync", {"reason": "redis_reconnected"}))
    assert [c.event for c in early.got] == ["resync"]
    assert [c.event for c in late.got] == ["resync"]
    assert gone.got == [] and later.got == []
