"""End to end: session tokens, stream tickets, and no credential in the logs."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from hostile_support import exchange, leaked_fragments, session_token, status_of, ticket_for
from support import http_json, open_stream, wait_for

pytestmark = pytest.mark.timeout(60)

SECRET = "e2e-session-secret-" + "0123456789abcdef" * 4
OTHER_SECRET = "e2e-other-secret-" + "fedcba9876543210" * 4
API_KEY = "e2e-api-key"


def token(shop: str, *, secret: str = SECRET, exp_in: float = 60, **claims: Any) -> str:
    body: dict[str, Any] = {
        "dest": f"https://{shop}",
        "aud": API_KEY,
        "exp": int(time.time() + exp_in),
        "sub": "42",
    }
    body.update(claims)
    return jwt.encode({k: v for k, v in body.items() if v is not None}, secret, algorithm="HS256")


def auth_config(**extra: Any) -> dict[str, Any]:
    auth = {"session_token_secret": SECRET, "api_key": API_KEY}
    auth.update(extra)
    return {"auth": auth}


async def accepted(url: str, headers: dict[str, str] | None = None) -> None:
    async with open_stream(url, headers=headers) as s:
        body = b"" if s.status == 200 else await s.json_body()
        assert s.status == 200, body
        ev = await s.next_event(10)
        assert ev.event == "connected", ev


async def refused(url: str, headers: dict[str, str] | None = None) -> str:
    status, _, body = await http_json(url, headers=headers)
    assert status == 401, (status, body)
    assert body["error"] == "invalid_token", body
    return str(body["message"])


@pytest.fixture
def gw(gateway_factory: Any) -> Any:
    return gateway_factory.start(config=auth_config())


async def test_token_required(gw: Any, merchant: Any) -> None:
    _, shop = merchant
    assert "required" in await refused(gw.stream_url(shop))


async def test_valid_token_in_query(gw: Any, merchant: Any) -> None:
    _, shop = merchant
    await accepted(gw.stream_url(shop, token=token(shop)))


async def test_valid_token_as_bearer(gw: Any, merchant: Any) -> None:
    _, shop = merchant
    await accepted(gw.stream_url(shop), {"Authorization": f"Bearer {token(shop)}"})


async def test_token_within_leeway(gw: Any, merchant: Any) -> None:
    _, shop = merchant
    await accepted(gw.stream_url(shop, token=token(shop, exp_in=-5)))


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda shop: token(shop, exp_in=-30), "expired"),
        (lambda shop: token(shop, dest="https://other.myshopify.com"), "dest"),
        (lambda shop: token(shop, aud="someone-else"), "aud"),
        (lambda shop: token(shop, aud=None), "aud"),
        (lambda shop: token(shop, secret=OTHER_SECRET), "signature"),
        (lambda shop: token(shop, nbf=int(time.time()) + 120), "nbf"),
        (lambda shop: "garbage", "malformed"),
    ],
    ids=["expired", "wrong-dest", "wrong-aud", "missing-aud", "wrong-secret", "nbf", "garbage"],
)
async def test_bad_tokens_refused(gw: Any, merchant: Any, make: Any, words: str) -> None:
    _, shop = merchant
    bad = make(shop)
    msg = await refused(gw.stream_url(shop, token=bad))
    assert words in msg
    assert SECRET not in msg
    msg = await refused(gw.stream_url(shop), {"Authorization": f"Bearer {bad}"})
    assert words in msg


async def test_token_refusal_precedes_unknown_merchant(gw: Any) -> None:
    """401 before 403: an unknown shop with a bad token is invalid_token."""
    shop = "nobody-here-at-all.myshopify.com"
    await refused(gw.stream_url(shop, token=token(shop, exp_in=-30)))
    status, _, body = await http_json(gw.stream_url(shop, token=token(shop)))
    assert (status, body["error"]) == (403, "unknown_merchant")


async def test_ticket_issued_and_accepted(gw: Any, merchant: Any) -> None:
    _, shop = merchant
    status, body = await ticket_for(gw, shop, token(shop))
    assert status == 200, body
    assert body["expiresIn"] == 3600
    assert isinstance(body["ticket"], str) and body["ticket"]
    # reusable: EventSource reconnects with the same URL
    for _ in range(2):
        await accepted(gw.stream_url(shop, ticket=body["ticket"]))


async def test_ticket_requires_a_valid_bearer_token(gw: Any, merchant: Any) -> None:
    _, shop = merchant
    for bad in (
        token(shop, exp_in=-30),
        token(shop, secret=OTHER_SECRET),
        token("x.myshopify.com"),
    ):
        status, body = await ticket_for(gw, shop, bad)
        assert (status, body["error"]) == (401, "invalid_token"), body
    status, _, body = await http_json(gw.url(f"{gw.path}/ticket", shop=shop), method="POST")
    assert (status, body["error"]) == (401, "invalid_token"), body
    # a token in the query is not enough for a ticket: Bearer only
    status, _, body = await http_json(
        gw.url(f"{gw.path}/ticket", shop=shop, token=token(shop)), method="POST"
    )
    assert status == 401, body


async def test_ticket_for_another_shop_refused(gw: Any, merchant: Any, postgres_server: Any):
    _, shop = merchant
    other = f"other-{shop}"
    postgres_server.add_merchant(f"other-{shop}-id", other)
    _, body = await ticket_for(gw, other, token(other))
    await accepted(gw.stream_url(other, ticket=body["ticket"]))
    assert "another shop" in await refused(gw.stream_url(shop, ticket=body["ticket"]))


async def test_tampered_ticket_and_token_as_ticket_refused(gw: Any, merchant: Any) -> None:
    _, shop = merchant
    _, body = await ticket_for(gw, shop, token(shop))
    head, claims, sig = body["ticket"].split(".")
    flipped = sig[:5] + ("A" if sig[5] != "A" else "B") + sig[6:]
    await refused(gw.stream_url(shop, ticket=f"{head}.{claims}.{flipped}"))
    await refused(gw.stream_url(shop, ticket=token(shop)))
    # a ticket signed by another gateway secret
    forged = jwt.encode(
        {"typ": "stream-ticket", "shop": shop, "exp": int(time.time()) + 60},
        SECRET,
        algorithm="HS256",
    )
    await refused(gw.stream_url(shop, ticket=forged))


async def test_ticket_expires_without_leeway(gateway_factory: Any, merchant: Any) -> None:
    gw = gateway_factory.start(config=auth_config(ticket_ttl=1))
    _, shop = merchant
    status, body = await ticket_for(gw, shop, token(shop))
    assert (status, body["expiresIn"]) == (200, 1)
    issued = time.monotonic()

    async def is_refused() -> bool:
        async with open_stream(gw.stream_url(shop, ticket=body["ticket"])) as s:
            if s.status == 200:  # still valid: an open stream, do not wait for its end
                return False
            answer = await s.json_body()
        assert (s.status, answer["error"]) == (401, "invalid_token"), answer
        assert "expired" in answer["message"]
        return True

    await wait_for(is_refused, timeout=5, interval=0.1)
    # at most ttl + 1 s of integer-second rounding: a 10 s leeway would still accept it
    assert time.monotonic() - issued < 4


async def test_no_token_or_ticket_in_the_logs(gateway_factory: Any, merchant: Any) -> None:
    gw = gateway_factory.start(config={**auth_config(), "logging": {"level": "DEBUG"}})
    _, shop = merchant
    good = token(shop)
    bad = token(shop, exp_in=-30)
    wrong = token(shop, secret=OTHER_SECRET)
    bearer = token(shop, sub="bearer-user")
    await accepted(gw.stream_url(shop, token=good))
    await accepted(gw.stream_url(shop), {"Authorization": f"Bearer {bearer}"})
    await refused(gw.stream_url(shop, token=bad))
    await refused(gw.stream_url(shop), {"Authorization": f"Bearer {wrong}"})
    _, body = await ticket_for(gw, shop, good)
    ticket = body["ticket"]
    await accepted(gw.stream_url(shop, ticket=ticket))
    await accepted(gw.stream_url(shop, ticket=ticket, lastEventId="x-1"))
    await refused(gw.stream_url("other-shop.myshopify.com", ticket=ticket))
    # requests that fail before auth still carry the credentials in their URL
    await http_json(gw.url(gw.path, shop="NOT A SHOP", token=good, ticket=ticket))
    await http_json(gw.url("/no/such/path", token=good, ticket=ticket))
    await wait_for(lambda: gw.log_text().count("stream close") >= 4, timeout=5)
    gw.stop()
    log = gw.log_text()
    assert "stream open" in log  # the log did capture the traffic
    secrets = {
        "session token": good,
        "expired token": bad,
        "foreign token": wrong,
        "bearer token": bearer,
        "ticket": ticket,
        "secret": SECRET,
        "api key": API_KEY,
    }
    for what, value in secrets.items():
        assert value not in log, f"{what} leaked into the gateway log"
        # nor a JWT's claims or signature alone (the header is the same for every HS256 JWT)
        for part in value.split(".")[1:]:
            assert part not in log, f"part of the {what} leaked into the gateway log"


# -- credentials smuggled with %-encoded names never reach the log -----------------


def _smuggling_requests(path: str, shop: str, jwt: str, ticket: str) -> list[bytes]:
    host = b"\r\nHost: smuggler\r\n"
    end = b"\r\n"
    q = f"{path}?shop={shop}"
    malformed = [
        f"GET {q}&%74oken={jwt}\x01 HTTP/1.1",
        f"GET {q}&%74icket={ticket}\x01 HTTP/1.1",
        f"GET {q}&t%6Fken={jwt}\x01 HTTP/1.1",
        f"GET {path}?\x01shop={shop}&%74oken={jwt} HTTP/1.1",
        f"GET {q}&%54OKEN={jwt}\x7f HTTP/1.1",
        f"GET {q}&%74oken={jwt} broken HTTP/1.1",
        f"GET {q}&ti%63ket={ticket}\x00 HTTP/1.1",
        f"GET {q}&%74oken={jwt}&pad={'a' * 9000} HTTP/1.1",
    ]
    well_formed = [
        f"GET {q}&%74oken={jwt} HTTP/1.1",
        f"GET {q}&%74icket={ticket} HTTP/1.1",
        f"GET {q}&t%6Fken={jwt} HTTP/1.1",
        f"GET {path}?shop=other-shop.myshopify.com&%74oken={jwt} HTTP/1.1",
        f"GET {path}?shop=NOT_A_SHOP&t%6Fken={jwt} HTTP/1.1",
        f"GET /nowhere?%74oken={jwt}&%74icket={ticket} HTTP/1.1",
        f"POST {path}/ticket?shop={shop}&%74oken={jwt} HTTP/1.1",
    ]
    out = [line.encode() + host + end for line in malformed + well_formed]
    out += [  # credentials in malformed headers
        f"GET {q} HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {jwt}\x01\r\n\r\n".encode(),
        f"GET {q} HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.2.3.4?token={jwt}\x00\r\n\r\n".encode(),
        f"GET {q} HTTP/1.1\r\nHost: h\r\nLast-Event-ID: x&%74oken={jwt}\r\n\r\n".encode(),
    ]
    return out


@pytest.mark.parametrize(("level", "fmt"), [("INFO", "text"), ("DEBUG", "json")])
async def test_smuggled_tokens_never_reach_the_log(
    gateway_factory: Any, merchant: Any, level: str, fmt: str
) -> None:
    secret = "hardening-secret-0123456789abcdef"
    gw = gateway_factory.start(
        config={
            "auth": {"session_token_secret": secret},
            "logging": {"level": level, "format": fmt},
        }
    )
    _, shop = merchant
    token = session_token(shop, secret)
    status, body = await ticket_for(gw, shop, token)
    assert status == 200, (status, body)
    ticket = body["ticket"]
    statuses = []
    for raw in _smuggling_requests(gw.path, shop, token, ticket):
        statuses.append(status_of(await exchange(gw.port, raw, timeout=5)))
    assert gw.live(), "the gateway must survive the smuggling attempts"
    assert not any(s is not None and s >= 500 and s != 503 for s in statuses), statuses
    log = gw.log_text()
    signature = token.rsplit(".", 1)[1]
    assert token not in log
    assert leaked_fragments(log, signature) == [], "part of the JWT signature is in the log"
    ticket_secret = ticket.rsplit(".", 1)[-1]
    assert leaked_fragments(log, ticket_secret) == [], "part of the ticket is in the log"
    assert secret not in log
