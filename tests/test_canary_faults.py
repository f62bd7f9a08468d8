"""The delivery canary cuts the link on a Redis fault, and lets a bug raise
(pure unit: a fake client whose PUBLISH fails as told)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from gateway.broker import canary as canary_module
from gateway.broker.canary import Canary


class FailingClient:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    async def execute_command(self, *args: Any) -> Any:
        raise self.error


@pytest.fixture(autouse=True)
def at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(canary_module, "_EVERY_S", 0.0)


async def test_a_redis_fault_cuts_the_link() -> None:
    canary = Canary(FailingClient(RedisConnectionError("down")), b"ctl")  # type: ignore[arg-type]
    cuts: list[bool] = []
    connected = [True]

    def cut() -> None:
        cuts.append(True)
        connected[0] = False

    with pytest.raises(TimeoutError):  # the watch runs forever: bounded here
        async with asyncio.timeout(0.5):
            await canary.watch(lambda: connected[0], cut)
    assert cuts == [True] and not canary.ok


async def test_a_bug_raises_instead_of_cutting_the_link() -> None:
    canary = Canary(FailingClient(KeyError("a bug")), b"ctl")  # type: ignore[arg-type]
    cuts: list[bool] = []
    with pytest.raises(KeyError):
        await canary.watch(lambda: True, lambda: cuts.append(True))
    assert cuts == []


async def test_a_busy_redis_stops_the_backlog_measure_only_for_that_sample() -> None:
    """CLIENT LIST answered BUSY (another client's slow script) or LOADING: the backlog
    is unknown for now, and measured again next time. Only a refusal (a managed Redis
    that forbids CLIENT LIST) turns the measure off; a BUSY used to, for good."""
    class Answers:
        def __init__(self, *answers: object) -> None:
            self.answers = list(answers)

        async def client_list(self, _type: str) -> list[dict[str, str]]:
            answer = self.answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer  # type: ignore[return-value]

    ours = {"addr": "127.0.0.1:5000", "omem": "7"}
    busy = ResponseError("BUSY Redis is busy running a script.")
    canary = Canary(Answers(busy, [ours], ResponseError("NOPERM no"), [ours]),  # type: ignore[arg-type]
                    b"ctl", address=lambda: "127.0.0.1:5000")
    assert await canary.backlog() is None
    assert await canary.backlog() == 7
    assert await canary.backlog() is None  # refused: never asked again
    assert await canary.backlog() is None
