"""Unit tests of gateway.fanout.frames: the exact SSE bytes of every frame kind."""

from __future__ import annotations

import json

import pytest

from gateway.fanout.frames import PING, chunk, control_frame, event_frame


def parse_blocks(wire: bytes) -> list[list[tuple[str, str]]]:
    """Split SSE bytes into blocks of (field, value), as a WHATWG parser would."""
    text = wire.decode("utf-8")
    blocks: list[list[tuple[str, str]]] = []
    current: list[tuple[str, str]] = []
    # a conforming parser treats CR, LF and CRLF as line ends
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if line == "":
            if current:
                blocks.append(current)
            current = []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        current.append((name, value))
    assert not current, f"unterminated block in {wire!r}"
    return blocks


# -- event_frame ----------------------------------------------------------------


def test_single_line_payload_exact_bytes() -> None:
    frame = event_frame("abc-1", "progress", b'{"jobId":"j1","pct":5}')
    assert frame == b'id: abc-1\nevent: progress\ndata: {"jobId":"j1","pct":5}\n\n'


def test_empty_payload_still_carries_data_line() -> None:
    # a block without data is dropped by browsers: an empty payload is "data: "
    assert event_frame("e-2", "stage", b"") == b"id: e-2\nevent: stage\ndata: \n\n"


@pytest.mark.parametrize(
    ("payload", "lines"),
    [
        (b"a\nb", ["a", "b"]),
        (b"a\rb", ["a", "b"]),
        (b"a\r\nb", ["a", "b"]),
        (b"a\n\nb", ["a", "", "b"]),
        (b"a\r\n\r\nb\rc\nd", ["a", "", "b", "c", "d"]),
        (b"trailing\n", ["trailing", ""]),
        (b"\nleading", ["", "leading"]),
    ],
)
def test_line_breaks_become_data_lines(payload: bytes, lines: list[str]) -> None:
    frame = event_frame("x-9", "progress", payload)
    expected = (
        b"id: x-9\nevent: progress\n"
        + b"".join(b"data: " + line.encode() + b"\n" for line in lines)
        + b"\n"
    )
    assert frame == expected
    assert b"\r" not in frame
    # the browser rebuilds the payload with LF
    (block,) = parse_blocks(frame)
    assert "\n".join(v for k, v in block if k == "data") == "\n".join(lines)


@pytest.mark.parametrize(
    "payload",
    [
        b"x\n\nevent: completion\ndata: forged",
        b"x\r\rid: 999-999\r\rdata: forged",
        b"x\r\n\r\nretry: 1\r\n\r\n",
        b"\n\nevent: error\nid: 1-1\ndata: {}\n\n",
        b"event: completion",
        b"id: 5-5",
    ],
)
def test_payload_cannot_inject_fields_or_frames(payload: bytes) -> None:
    frame = event_frame("e-1", "progress", payload)
    blocks = parse_blocks(frame)
    assert len(blocks) == 1, frame
    (block,) = blocks
    names = [k for k, _ in block]
    assert names[:2] == ["id", "event"]
    assert set(names[2:]) == {"data"}
    assert dict(block[:2]) == {"id": "e-1", "event": "progress"}
    # nothing but data lines after the two header fields, and one terminator
    assert frame.endswith(b"\n\n") and not frame.endswith(b"\n\n\n")
    assert frame.count(b"\n\n") == 1
    text = payload.decode().replace("\r\n", "\n").replace("\r", "\n")
    assert "\n".join(v for k, v in block if k == "data") == text


def test_invalid_utf8_is_replaced_single_line() -> None:
    frame = event_frame("e-1", "progress", b"ok \xff\xfe end")
    frame.decode("utf-8")  # valid UTF-8 on the wire
    assert frame == "id: e-1\nevent: progress\ndata: ok \ufffd\ufffd end\n\n".encode()


def test_invalid_utf8_is_replaced_multi_line() -> None:
    frame = event_frame("e-1", "progress", b"\xc3\nb\x80")
    frame.decode("utf-8")
    assert frame == "id: e-1\nevent: progress\ndata: \ufffd\ndata: b\ufffd\n\n".encode()


def test_valid_utf8_passes_unchanged() -> None:
    payload = '{"msg":"héllo ✓ 日本"}'.encode()
    assert event_frame("e-3", "stage", payload) == (
        b"id: e-3\nevent: stage\ndata: " + payload + b"\n\n"
    )


# -- control_frame --------------------------------------------------------------


def test_connected_frame_exact_bytes() -> None:
    frame = control_frame(
        "connected", {"merchantId": "m1", "shop": "shop1.myshopify.com"}, retry_ms=3000
    )
    assert frame == (
        b'retry: 3000\nevent: connected\ndata: {"merchantId":"m1","shop":"shop1.myshopify.com"}\n\n'
    )


def test_control_frame_without_retry() -> None:
    assert control_frame("resync", {"reason": "history_gap"}) == (
        b'event: resync\ndata: {"reason":"history_gap"}\n\n'
    )
    assert control_frame("shutdown", {"reason": "shutdown"}, retry_ms=0) == (
        b'retry: 0\nevent: shutdown\ndata: {"reason":"shutdown"}\n\n'
    )


def test_control_frame_data_is_one_line_even_with_newlines_in_values() -> None:
    frame = control_frame("revoked", {"reason": "a\nb\r\nc", "x": "é"})
    blocks = parse_blocks(frame)
    assert len(blocks) == 1
    (block,) = blocks
    assert [k for k, _ in block] == ["event", "data"]
    assert json.loads(block[1][1]) == {"reason": "a\nb\r\nc", "x": "é"}
    frame.decode("utf-8")


def test_ping_comment() -> None:
    assert PING == b": ping\n\n"
    assert parse_blocks(PING) == []


# -- chunk ----------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 15, 16, 255, 256, 4096, 70000])
def test_chunk_framing(size: int) -> None:
    frame = b"d" * size
    wire = chunk(frame)
    head, _, rest = wire.partition(b"\r\n")
    assert head == f"{size:x}".encode()
    assert rest == frame + b"\r\n"


def test_chunk_of_real_frame_decodes_back() -> None:
    frame = event_frame("e-1", "progress", "multi\nliné".encode())
    wire = chunk(frame)
    size_line, _, body = wire.partition(b"\r\n")
    n = int(size_line, 16)
    assert n == len(frame)
    assert body[:n] == frame and body[n:] == b"\r\n"
    # a chunk never uses the terminating zero-size marker
    assert not wire.startswith(b"0\r\n")
