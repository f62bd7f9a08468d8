"""What the gateway does when messages of some merchants may have been lost.

The broker calls `resync` when a subscriber link reconnects (at Redis' first
answer: what was published while it was down never came) and `live_again`
once every channel of those merchants is subscribed again; the hub calls
`missed` when a durable id shows that messages never arrived though the
channels are live. Each open stream of those merchants gets `resync`
(`redis_reconnected`) at once; a stream that attaches before the channels are
live again gets it then (it may have missed the same messages); and with
`sse.snapshot` every stream of the merchant is then held until its job state
is read (`durable/snapshots.py`), so the snapshot follows the `resync`.
"""

from __future__ import annotations

from .durable.snapshots import Snapshots
from .fanout.frames import Control
from .fanout.hub import Hub

__all__ = ["Resyncs"]


def _reconnected() -> Control:
    """One per broadcast: a stream queues a frame by its key."""
    return Control("resync", {"reason": "redis_reconnected"})


class Resyncs:
    def __init__(self, hub: Hub, snapshots: Snapshots | None) -> None:
        """`snapshots`: None when `sse.snapshot` is off."""
        self._hub = hub
        self._snapshots = snapshots

    def resync(self, merchant_ids: list[str]) -> None:
        """Messages of these merchants may have been lost (Redis reconnected or moved)."""
        self._hub.resync(merchant_ids, _reconnected())

    def live_again(self, merchant_ids: list[str]) -> None:
        """Their channels are subscribed again after `resync`: streams attached since
        get it too, then the job state is read. Not for a merchant whose streams all
        attached after the resync (its first stream came during the outage): they
        got no `resync` (their opening read Redis), so no snapshot follows one."""
        self._hold_for_snapshots(self._hub.live_again(merchant_ids, _reconnected()))

    def missed(self, merchant_ids: list[str]) -> None:
        """Messages of these merchants never arrived, though their channels are live.
        Not `hub.live_again`: a resync of the broker's may still be waiting for it;
        then its `live_again` holds the streams for the snapshot (a snapshot read now
        would be followed by that one, with no resync between)."""
        pending = self._hub.awaiting_live(merchant_ids)
        self._hub.resync(merchant_ids, _reconnected(), until_live=False)
        self._hold_for_snapshots([m for m in merchant_ids if m not in pending])

    def _hold_for_snapshots(self, merchant_ids: list[str]) -> None:
        if self._snapshots is not None:
            self._snapshots.after_resync(merchant_ids)
