"""Durable events, pure code: ids, the channel envelope, Redis keys, replay bridging.

A durable publish (docs/publishing.md) records the event in a per-merchant
Redis Stream and publishes it on the merchant channel wrapped in an envelope:

    NUL "gw1:" <epoch>:<offset> NUL <payload bytes>

A plain PUBLISH payload never starts with NUL, so the two never mix up. The id
`<epoch>:<offset>` is global: every gateway process sharing the Redis reads
the same one. `epoch` names one life of the merchant's history (a new one when
the history was lost); `offset` counts durable publishes within it.

No I/O here: `history.py` and `publisher.py` beside it build on it.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = [
    "ENVELOPE_PREFIX",
    "MERCHANT_ID_PATTERN",
    "DurableEvent",
    "DurableId",
    "HistoryHead",
    "HistorySnapshot",
    "InvalidData",
    "ScriptEvent",
    "bridge",
    "encode_data",
    "encode_envelope",
    "epoch_candidate",
    "history_keys",
    "idempotency_key",
    "job_state_keys",
    "lost_ids_key",
    "lost_offsets",
    "parse_envelope",
    "script_args",
    "valid_merchant_id",
]

ENVELOPE_PREFIX = b"\x00gw1:"
MERCHANT_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")

_EPOCH_MAX = 32
_OFFSET_DIGITS = 19
_ID_MAX = _EPOCH_MAX + 1 + _OFFSET_DIGITS
_ID = re.compile(rb"([0-9a-z]{1,32}):([1-9][0-9]{0,18})")
_ID_END = len(ENVELOPE_PREFIX) + _ID_MAX + 1  # the second NUL is before this index


@dataclass(frozen=True, slots=True)
class DurableId:
    """`<epoch>:<offset>`: epoch 1-32 chars of [0-9a-z], offset a positive integer."""

    epoch: str
    offset: int

    @classmethod
    def parse(cls, text: object) -> DurableId | None:
        """The id `text` spells, or None (never raises; canonical form only)."""
        if not isinstance(text, str) or not 3 <= len(text) <= _ID_MAX or not text.isascii():
            return None
        match = _ID.fullmatch(text.encode("ascii"))
        if match is None:
            return None
        return cls(match[1].decode("ascii"), int(match[2]))

    def __str__(self) -> str:
        return f"{self.epoch}:{self.offset}"


class DurableEvent(NamedTuple):
    """One entry of a merchant's durable history."""

    id: DurableId
    event: str
    payload: bytes


def encode_envelope(event_id: str, payload: bytes) -> bytes:
    """What the publish script sends on the channel (see the module docstring)."""
    return b"%s%s\x00%s" % (ENVELOPE_PREFIX, event_id.encode("ascii"), payload)


def parse_envelope(message: bytes) -> tuple[str, bytes] | None:
    """(durable id, payload) of an enveloped message; None for a plain payload.

    A message that starts with NUL but is not a well-formed envelope is also
    None (NUL-leading payloads are reserved). Never raises.
    """
    if message[:1] != b"\x00" or not message.startswith(ENVELOPE_PREFIX):
        return None
    start = len(ENVELOPE_PREFIX)
    end = message.find(b"\x00", start, _ID_END)
    if end < 0 or _ID.fullmatch(message, start, end) is None:
        return None
    return message[start:end].decode("ascii"), message[end + 1 :]


def valid_merchant_id(merchant_id: object) -> bool:
    """True when `merchant_id` may be published to (`MERCHANT_ID_PATTERN`)."""
    return isinstance(merchant_id, str) and MERCHANT_ID_PATTERN.fullmatch(merchant_id) is not None


def job_state_keys(merchant_id: str) -> tuple[str, str]:
    """(job state hash, job index sorted set); the merchant id is their hash tag."""
    return f"gateway:jobs:{{{merchant_id}}}", f"gateway:jobids:{{{merchant_id}}}"


def idempotency_key(merchant_id: str, key: str) -> str:
    """The string key that remembers a durable publish's idempotency key."""
    return f"gateway:idem:{{{merchant_id}}}:{key}"


def history_keys(merchant_id: str) -> tuple[str, str]:
    """(history stream, meta hash): braces make the merchant id a cluster hash tag."""
    return f"gateway:history:{{{merchant_id}}}", f"gateway:meta:{{{merchant_id}}}"


def epoch_candidate() -> str:
    """A random epoch candidate; the script keeps it only when it starts a history."""
    return secrets.token_hex(6)


class InvalidData(ValueError):
    """A value with no UTF-8 JSON text (NaN, infinity, a lone surrogate, a non-JSON type)."""


# built once: json.dumps with options builds a new encoder per call
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode_data(data: Any) -> bytes:
    """The payload for `data`: a string as its text, anything else as compact JSON."""
    if isinstance(data, str):
        text = data
    else:
        try:
            text = _COMPACT.encode(data)
        except (TypeError, ValueError, RecursionError) as exc:
            raise InvalidData(f"data is not a JSON value: {exc}") from None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidData("data is not valid Unicode (lone surrogate)") from None


ScriptEvent = tuple[str, str, bytes, str | None, int | None, str | None]
"""One event of a publish script run: (merchant id, event, payload, job, seq, key)."""


def script_args(
    channel_template: str,
    events: Sequence[ScriptEvent],
    *,
    history: int,
    ttl_s: int,
    sharded: bool,
    jobs_kept: int = 100,
    idempotency_ttl_s: int = 600,
    epoch: str | None = None,
) -> tuple[list[str], list[str | bytes | int]]:
    """(KEYS, ARGV) of one run of `gateway/durable/publish.lua` publishing `events` in
    order (the only copy of its layout)."""
    keys: list[str] = []
    argv: list[str | bytes | int] = [
        history, ttl_s, epoch or epoch_candidate(), "SPUBLISH" if sharded else "PUBLISH",
        jobs_kept, idempotency_ttl_s,
    ]
    for merchant_id, event, payload, job, seq, key in events:
        keys += (*history_keys(merchant_id), *job_state_keys(merchant_id))
        if key is not None:
            keys.append(idempotency_key(merchant_id, key))
        argv += (channel_template.format(merchant_id=merchant_id, event=event), event, payload,
                 job or "", "" if seq is None else seq, "0" if key is None else "1")
    return keys, argv


@dataclass(frozen=True, slots=True)
class HistorySnapshot:
    """One atomic read of a merchant's history: its epoch, last offset and entries,
    and the offsets of that epoch a failover gave to other events (`lost`)."""

    epoch: str | None
    head: int
    entries: tuple[DurableEvent, ...]
    lost: frozenset[int] = frozenset()

    def after(self, last: DurableId, limit: int | None = None) -> list[DurableEvent] | None:
        """`bridge(self.epoch, self.head, self.entries, last, limit)`; None for an id
        a failover gave again (the client's event under it was lost)."""
        if self.lost_id(last):
            return None
        return bridge(self.epoch, self.head, self.entries, last, limit)

    def lost_id(self, last: DurableId) -> bool:
        """Whether a failover gave `last` to another event (the client's was lost)."""
        return last.epoch == self.epoch and last.offset in self.lost


class HistoryHead(NamedTuple):
    """The newest id of a merchant's history (None: no history) and the offsets of its
    epoch a failover gave to other events."""

    id: DurableId | None
    lost: frozenset[int] = frozenset()

    def bridges(self, last: DurableId) -> bool:
        """Whether this history may hold the events after `last`: same epoch, not past
        the head, and not an id whose event a failover lost."""
        head = self.id
        return (head is not None and head.epoch == last.epoch and head.offset >= last.offset
                and last.offset not in self.lost)


def lost_ids_key(merchant_id: str) -> str:
    """The set of durable ids ("EPOCH:OFFSET") whose events a failover lost, after a
    gateway saw the promoted replica give them to other events."""
    return f"gateway:lost:{{{merchant_id}}}"


def lost_offsets(epoch: str | None, members: Iterable[bytes | str]) -> frozenset[int]:
    """The offsets of `epoch` among the lost ids `members`."""
    out = set()
    for member in members:
        lost = DurableId.parse(member.decode("ascii", "replace") if isinstance(member, bytes)
                               else member)
        if lost is not None and lost.epoch == epoch:
            out.add(lost.offset)
    return frozenset(out)


def bridge(
    epoch: str | None,
    head: int,
    entries: Sequence[DurableEvent],
    last: DurableId,
    limit: int | None = None,
) -> list[DurableEvent] | None:
    """The events after `last`, in order, or None when the history cannot bridge to it.

    `entries` ascend by offset and end at `head` (the newest offset). None: the
    epoch differs or is gone, `last` is ahead of `head`, the events right after
    `last` were trimmed or expired, or more than `limit` events follow it.
    """
    if epoch is None or epoch != last.epoch or last.offset > head:
        return None
    missed = head - last.offset
    if missed == 0:
        return []
    if limit is not None and missed > limit:
        return None
    lo, hi = 0, len(entries)
    while lo < hi:  # first entry with offset > last.offset
        mid = (lo + hi) // 2
        if entries[mid].id.offset <= last.offset:
            lo = mid + 1
        else:
            hi = mid
    out = list(entries[lo:])
    if len(out) != missed or out[0].id.offset != last.offset + 1:
        return None
    return out
