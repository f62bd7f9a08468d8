"""Unit tests of gateway.access.auth.Authenticator: session tokens and stream tickets."""

from __future__ import annotations

import base64
import json
import time
import types
from typing import Any

import jwt
import pytest

import gateway.access.auth as auth_module
from gateway.access.auth import Authenticator
from gateway.config import AuthConfig
from gateway.errors import InvalidTokenError

SECRET = "unit-test-session-secret-" + "0123456789abcdef" * 4  # >= 64 bytes: no pyjwt key warning
OTHER_SECRET = "another-secret-of-enough-length-" + "fedcba9876543210" * 4
API_KEY = "api-key-123"
SHOP = "unit-shop.myshopify.com"


def make_auth(api_key: str = "", ticket_ttl: float = 3600) -> Authenticator:
    return Authenticator(
        AuthConfig(session_token_secret=SECRET, api_key=api_key, ticket_ttl=ticket_ttl)
    )


def token(
    *,
    secret: str = SECRET,
    algorithm: str = "HS256",
    shop: str = SHOP,
    exp_in: float | None = 60,
    **claims: Any,
) -> str:
    now = time.time()
    body: dict[str, Any] = {"dest": f"https://{shop}", "iss": f"https://{shop}/admin"}
    if exp_in is not None:
        body["exp"] = int(now + exp_in)
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, secret, algorithm=algorithm)


def refused(fn: Any, *args: Any) -> str:
    with pytest.raises(InvalidTokenError) as info:
        fn(*args)
    return str(info.value)


# -- session tokens -------------------------------------------------------------


def test_enabled_only_with_a_secret() -> None:
    assert make_auth().enabled
    assert not Authenticator(AuthConfig()).enabled


def test_valid_token() -> None:
    claims = make_auth().check_session_token(token(), SHOP)
    assert claims["dest"] == f"https://{SHOP}"


def test_missing_token() -> None:
    assert "required" in refused(make_auth().check_session_token, None, SHOP)
    assert "required" in refused(make_auth().check_session_token, "", SHOP)


def test_malformed_token() -> None:
    assert "malformed" in refused(make_auth().check_session_token, "not.a.jwt", SHOP)


def test_expired_beyond_leeway() -> None:
    msg = refused(make_auth().check_session_token, token(exp_in=-30), SHOP)
    assert "expired" in msg


def test_expired_within_leeway_is_accepted() -> None:
    make_auth().check_session_token(token(exp_in=-5), SHOP)


def test_nbf_in_future_beyond_leeway() -> None:
    msg = refused(make_auth().check_session_token, token(nbf=int(time.time()) + 60), SHOP)
    assert "nbf" in msg


def test_nbf_within_leeway_is_accepted() -> None:
    make_auth().check_session_token(token(nbf=int(time.time()) + 5), SHOP)


def test_nbf_in_past_is_accepted() -> None:
    make_auth().check_session_token(token(nbf=int(time.time()) - 5), SHOP)


@pytest.mark.parametrize(
    "dest",
    [
        "https://other.myshopify.com",
        SHOP,  # no scheme
        f"http://{SHOP}",
        f"https://{SHOP}/",
        f"https://{SHOP}.evil.com",
    ],
)
def test_wrong_dest(dest: str) -> None:
    msg = refused(make_auth().check_session_token, token(dest=dest), SHOP)
    assert "dest" in msg


def test_token_for_another_shop() -> None:
    other = "other.myshopify.com"
    assert "dest" in refused(make_auth().check_session_token, token(shop=other), SHOP)


def test_aud_matching_api_key() -> None:
    make_auth(api_key=API_KEY).check_session_token(token(aud=API_KEY), SHOP)


def test_wrong_aud() -> None:
    msg = refused(make_auth(api_key=API_KEY).check_session_token, token(aud="other"), SHOP)
    assert "aud" in msg


def test_missing_aud_when_api_key_set() -> None:
    msg = refused(make_auth(api_key=API_KEY).check_session_token, token(), SHOP)
    assert "aud" in msg


def test_aud_ignored_without_api_key() -> None:
    make_auth().check_session_token(token(aud="anything"), SHOP)


def test_wrong_secret() -> None:
    msg = refused(make_auth().check_session_token, token(secret=OTHER_SECRET), SHOP)
    assert "signature" in msg
    assert SECRET not in msg and OTHER_SECRET not in msg


def test_alg_none_rejected() -> None:
    unsigned = jwt.encode(
        {"dest": f"https://{SHOP}", "exp": int(time.time()) + 60}, None, algorithm="none"
    )
    refused(make_auth().check_session_token, unsigned, SHOP)


def test_hs512_rejected() -> None:
    msg = refused(make_auth().check_session_token, token(algorithm="HS512"), SHOP)
    assert "HS256" in msg


def test_missing_exp() -> None:
    msg = refused(make_auth().check_session_token, token(exp_in=None), SHOP)
    assert "exp" in msg


def test_missing_dest() -> None:
    msg = refused(make_auth().check_session_token, token(dest=None), SHOP)
    assert "dest" in msg


# -- tickets --------------------------------------------------------------------


def test_ticket_valid_and_reusable() -> None:
    auth = make_auth(ticket_ttl=120)
    ticket, ttl = auth.issue_ticket(SHOP)
    assert ttl == 120
    auth.check_ticket(ticket, SHOP)
    auth.check_ticket(ticket, SHOP)


def test_ticket_checked_by_another_instance_with_the_same_secret() -> None:
    ticket, _ = make_auth().issue_ticket(SHOP)
    make_auth().check_ticket(ticket, SHOP)


def test_ticket_wrong_shop() -> None:
    ticket, _ = make_auth().issue_ticket(SHOP)
    assert "another shop" in refused(make_auth().check_ticket, ticket, "x.myshopify.com")


def _segments(t: str) -> list[str]:
    return t.split(".")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(seg: str) -> bytes:
    return base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4))


def test_ticket_tampered_payload() -> None:
    auth = make_auth()
    ticket, _ = auth.issue_ticket(SHOP)
    head, body, sig = _segments(ticket)
    claims = json.loads(_unb64(body))
    claims["shop"] = "victim.myshopify.com"
    forged = ".".join([head, _b64(json.dumps(claims).encode()), sig])
    assert "signature" in refused(auth.check_ticket, forged, "victim.myshopify.com")


def test_ticket_tampered_signature() -> None:
    auth = make_auth()
    ticket, _ = auth.issue_ticket(SHOP)
    head, body, sig = _segments(ticket)
    raw = bytearray(_unb64(sig))
    raw[0] ^= 0xFF
    refused(auth.check_ticket, ".".join([head, body, _b64(bytes(raw))]), SHOP)


def test_ticket_from_another_secret() -> None:
    other = Authenticator(AuthConfig(session_token_secret=OTHER_SECRET))
    ticket, _ = other.issue_ticket(SHOP)
    refused(make_auth().check_ticket, ticket, SHOP)


def _issue_at(monkeypatch: pytest.MonkeyPatch, auth: Authenticator, offset: float) -> str:
    """A ticket issued as if the clock were `offset` seconds away from now."""
    real = time.time()
    monkeypatch.setattr(auth_module, "time", types.SimpleNamespace(time=lambda: real + offset))
    try:
        ticket, _ = auth.issue_ticket(SHOP)
    finally:
        monkeypatch.undo()
    return ticket


def test_ticket_expired(monkeypatch: pytest.MonkeyPatch) -> None:
    auth = make_auth(ticket_ttl=60)
    ticket = _issue_at(monkeypatch, auth, -120)
    assert "expired" in refused(auth.check_ticket, ticket, SHOP)


def test_ticket_gets_no_leeway(monkeypatch: pytest.MonkeyPatch) -> None:
    auth = make_auth(ticket_ttl=60)
    ticket = _issue_at(monkeypatch, auth, -63)  # expired 3 s ago: a token would pass
    assert "expired" in refused(auth.check_ticket, ticket, SHOP)


def test_ticket_lifetime_is_ticket_ttl() -> None:
    auth = make_auth(ticket_ttl=90)
    ticket, _ = auth.issue_ticket(SHOP)
    exp = jwt.decode(ticket, options={"verify_signature": False})["exp"]
    assert abs(exp - (time.time() + 90)) <= 2


def test_session_token_not_accepted_as_ticket() -> None:
    auth = make_auth()
    refused(auth.check_ticket, token(), SHOP)
    # even one shaped exactly like a ticket, signed with the session secret
    lookalike = jwt.encode(
        {"typ": "stream-ticket", "shop": SHOP, "exp": int(time.time()) + 60},
        SECRET,
        algorithm="HS256",
    )
    refused(auth.check_ticket, lookalike, SHOP)


def test_ticket_not_accepted_as_session_token() -> None:
    auth = make_auth()
    ticket, _ = auth.issue_ticket(SHOP)
    refused(auth.check_session_token, ticket, SHOP)


def test_ticket_alg_none_rejected() -> None:
    forged = jwt.encode(
        {"typ": "stream-ticket", "shop": SHOP, "exp": int(time.time()) + 60},
        None,
        algorithm="none",
    )
    refused(make_auth().check_ticket, forged, SHOP)


def test_ticket_does_not_contain_the_secret() -> None:
    ticket, _ = make_auth().issue_ticket(SHOP)
    decoded = json.dumps(jwt.decode(ticket, options={"verify_signature": False}))
    assert SECRET not in decoded and SECRET not in ticket
