"""gateway/durable/ids.py: ids, envelope, keys, data encoding and replay bridging (pure)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.durable.ids import (
    ENVELOPE_PREFIX,
    DurableEvent,
    DurableId,
    HistoryHead,
    HistorySnapshot,
    InvalidData,
    bridge,
    encode_data,
    encode_envelope,
    epoch_candidate,
    history_keys,
    lost_offsets,
    parse_envelope,
    script_args,
    valid_merchant_id,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a:1", DurableId("a", 1)),
        ("0f3a9c:42", DurableId("0f3a9c", 42)),
        ("z" * 32 + ":9223372036854775807", DurableId("z" * 32, 9223372036854775807)),
        ("ab:" + "9" * 19, DurableId("ab", int("9" * 19))),
    ],
)
def test_parse_accepts_canonical_ids(text: str, expected: DurableId) -> None:
    assert DurableId.parse(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize(
    "text",
    [
        "", ":", "a:", ":1", "a:0", "a:01", "A:1", "a-1", "1a2b3c-17", "a:1:2", "a:1 ", " a:1",
        "a:1\n", "a:-1", "a:+1", "a:1.0", "z" * 33 + ":1", "a:" + "1" * 20, "a:\u0661", "é:1",
        "a\x00:1", None, 7, b"a:1",
    ],
)
def test_parse_refuses_everything_else(text: object) -> None:
    assert DurableId.parse(text) is None


@given(st.text())
def test_parse_never_raises_and_round_trips(text: str) -> None:
    parsed = DurableId.parse(text)
    if parsed is not None:
        assert str(parsed) == text


@given(st.text(alphabet="0123456789abcdefz:-", max_size=60))
def test_parse_near_misses_never_raise(text: str) -> None:
    parsed = DurableId.parse(text)
    assert parsed is None or str(parsed) == text


def test_envelope_round_trip() -> None:
    payload = b'{"jobId":"po-42"}\x00\nline2'
    message = encode_envelope("ab12:7", payload)
    assert message == b"\x00gw1:ab12:7\x00" + payload
    assert message.startswith(ENVELOPE_PREFIX)
    assert parse_envelope(message) == ("ab12:7", payload)
    assert parse_envelope(encode_envelope("ab12:7", b"")) == ("ab12:7", b"")


@pytest.mark.parametrize(
    "message",
    [
        b"", b"plain", b'{"a":1}', b"gw1:ab:1\x00x", b"\x00", b"\x00gw1:", b"\x00gw1:ab:1",
        b"\x00gw2:ab:1\x00x", b"\x00gw1:AB:1\x00x", b"\x00gw1:ab:0\x00x", b"\x00gw1:ab-1\x00x",
        b"\x00gw1:" + b"a" * 33 + b":1\x00x", b"\x00gw1:a:" + b"1" * 20 + b"\x00x",
    ],
)
def test_plain_or_malformed_messages_are_not_envelopes(message: bytes) -> None:
    assert parse_envelope(message) is None


@given(st.binary())
def test_parse_envelope_never_raises(message: bytes) -> None:
    parsed = parse_envelope(message)
    if parsed is not None:
        assert encode_envelope(*parsed) == message


@given(st.binary(max_size=40))
def test_parse_envelope_of_prefixed_noise_never_raises(tail: bytes) -> None:
    parsed = parse_envelope(ENVELOPE_PREFIX + tail)
    if parsed is not None:
        assert DurableId.parse(parsed[0]) is not None


def test_keys_share_the_merchant_hash_tag() -> None:
    assert history_keys("m1") == ("gateway:history:{m1}", "gateway:meta:{m1}")


def test_merchant_id_pattern() -> None:
    assert valid_merchant_id("m1") and valid_merchant_id("A_b-9" * 25 + "abc")
    for bad in ("", "a" * 129, "m 1", "m1\n", "m:1", "m{1}", "ü", None, 1):
        assert not valid_merchant_id(bad)


def test_new_epoch_is_a_valid_epoch_and_random() -> None:
    epochs = {epoch_candidate() for _ in range(20)}
    assert len(epochs) == 20
    assert all(DurableId.parse(f"{e}:1") == DurableId(e, 1) for e in epochs)


@pytest.mark.parametrize(
    ("data", "payload"),
    [
        ("hello\nworld", b"hello\nworld"),
        ('{"a": 1}', b'{"a": 1}'),
        ("", b""),
        ({"jobId": "po-42", "percent": 40}, b'{"jobId":"po-42","percent":40}'),
        ([1, "é", None], '[1,"é",null]'.encode()),
        (None, b"null"),
        (True, b"true"),
        (42, b"42"),
        (1.5, b"1.5"),
    ],
)
def test_encode_data(data: object, payload: bytes) -> None:
    assert encode_data(data) == payload


@pytest.mark.parametrize("data", [math.nan, math.inf, {"x": object()}, "\ud800", {1j}])
def test_encode_data_refuses_what_has_no_json_text(data: object) -> None:
    with pytest.raises(InvalidData):
        encode_data(data)


def test_script_args_single_source_of_keys_and_argv() -> None:
    keys, argv = script_args(
        "merchant:{merchant_id}:{event}", [("m1", "progress", b"p", None, None, None)],
        history=100, ttl_s=60, sharded=False, epoch="abc",
    )
    assert keys == ["gateway:history:{m1}", "gateway:meta:{m1}", "gateway:jobs:{m1}",
                    "gateway:jobids:{m1}"]
    assert argv == [100, 60, "abc", "PUBLISH", 100, 600,
                    "merchant:m1:progress", "progress", b"p", "", "", "0"]
    keys, argv = script_args(
        "merchant:{merchant_id}:{event}",
        [("m1", "progress", b"p", "po-42", 7, "k.1"), ("m2", "stage", b"q", None, None, None)],
        history=100, ttl_s=60, sharded=False, jobs_kept=5, idempotency_ttl_s=30,
    )
    assert keys[4:6] == ["gateway:idem:{m1}:k.1", "gateway:history:{m2}"]  # every key in KEYS
    assert len(keys) == 9 and argv[4:6] == [5, 30]
    assert argv[6:] == ["merchant:m1:progress", "progress", b"p", "po-42", 7, "1",
                        "merchant:m2:stage", "stage", b"q", "", "", "0"]
    _, argv = script_args(
        "merchant:{{{merchant_id}}}:{event}", [("m1", "stage", b"", None, None, None)],
        history=0, ttl_s=1, sharded=True,
    )
    assert argv[6] == "merchant:{m1}:stage" and argv[3] == "SPUBLISH"
    assert DurableId.parse(f"{argv[2]}:1") is not None


def _events(epoch: str, offsets: range) -> tuple[DurableEvent, ...]:
    return tuple(DurableEvent(DurableId(epoch, o), "progress", b"%d" % o) for o in offsets)


def test_bridge_returns_exactly_the_missed_events() -> None:
    entries = _events("e", range(3, 11))  # history of 8, head 10
    got = bridge("e", 10, entries, DurableId("e", 5))
    assert got is not None and [ev.id.offset for ev in got] == [6, 7, 8, 9, 10]
    assert bridge("e", 10, entries, DurableId("e", 2)) == list(entries)
    assert bridge("e", 10, entries, DurableId("e", 10)) == []


def test_bridge_gaps() -> None:
    entries = _events("e", range(3, 11))
    assert bridge("e", 10, entries, DurableId("e", 1)) is None  # 2 trimmed
    assert bridge("x", 10, entries, DurableId("e", 5)) is None  # another epoch
    assert bridge(None, 0, (), DurableId("e", 5)) is None  # history gone
    assert bridge("e", 10, entries, DurableId("e", 11)) is None  # ahead of the head
    assert bridge("e", 10, (), DurableId("e", 9)) is None  # history 0 or stream expired
    assert bridge("e", 10, (), DurableId("e", 10)) == []  # nothing new, nothing kept
    holey = entries[:2] + entries[3:]
    assert bridge("e", 10, holey, DurableId("e", 3)) is None


def test_bridge_limit() -> None:
    entries = _events("e", range(1, 11))
    assert bridge("e", 10, entries, DurableId("e", 7), limit=3) == list(entries[7:])
    assert bridge("e", 10, entries, DurableId("e", 6), limit=3) is None
    snapshot = HistorySnapshot("e", 10, entries)
    assert snapshot.after(DurableId("e", 8)) == list(entries[8:])


def test_an_id_a_failover_gave_again_bridges_nothing() -> None:
    lost = lost_offsets("e", [b"e:4", "e:5", b"other:6", b"junk"])
    assert lost == frozenset({4, 5})
    head = HistoryHead(DurableId("e", 10), lost)
    assert head.bridges(DurableId("e", 3)) and head.bridges(DurableId("e", 6))
    assert not head.bridges(DurableId("e", 4)) and not head.bridges(DurableId("other", 3))
    assert not HistoryHead(None).bridges(DurableId("e", 3))
    snapshot = HistorySnapshot("e", 10, _events("e", range(1, 11)), lost)
    assert snapshot.after(DurableId("e", 5)) is None and snapshot.lost_id(DurableId("e", 5))
    assert len(snapshot.after(DurableId("e", 6)) or []) == 4
