"""Session tokens (Shopify-style HS256 JWTs) and the gateway's own stream tickets."""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from typing import Any

import jwt

from ..config import AuthConfig
from ..errors import InvalidTokenError

__all__ = ["Authenticator"]

_LEEWAY_S = 10
_TICKET_TYPE = "stream-ticket"


class Authenticator:
    """Checks session tokens and issues/checks tickets; `enabled` iff a secret is set."""

    def __init__(self, cfg: AuthConfig) -> None:
        self._cfg = cfg
        self.enabled = bool(cfg.session_token_secret)
        # A key of its own, so a session token can never pass as a ticket or back.
        self._ticket_key = hmac.new(
            cfg.session_token_secret.encode(), b"gateway stream ticket v1", hashlib.sha256
        ).digest()

    def check_session_token(self, token: str | None, shop: str) -> dict[str, Any]:
        if not token:
            raise InvalidTokenError("session token required")
        claims = _decode(
            "session token",
            token,
            self._cfg.session_token_secret,
            audience=self._cfg.api_key or None,
            leeway=_LEEWAY_S,
            options={"require": ["exp", "dest"], "verify_aud": bool(self._cfg.api_key)},
        )
        if claims.get("dest") != f"https://{shop}":
            raise InvalidTokenError("session token dest does not match the shop")
        return claims

    def issue_ticket(self, shop: str) -> tuple[str, int]:
        ttl = int(self._cfg.ticket_ttl)
        claims = {"typ": _TICKET_TYPE, "shop": shop, "exp": math.ceil(time.time()) + ttl}
        return jwt.encode(claims, self._ticket_key, algorithm="HS256"), ttl

    def check_ticket(self, ticket: str, shop: str) -> None:
        claims = _decode("ticket", ticket, self._ticket_key, options={"require": ["exp"]})
        if claims.get("typ") != _TICKET_TYPE:
            raise InvalidTokenError("ticket is malformed")
        if claims.get("shop") != shop:
            raise InvalidTokenError("ticket is for another shop")


def _decode(what: str, token: str, key: str | bytes, **checks: Any) -> dict[str, Any]:
    """Verify an HS256 JWT; the error names the check that failed, never the key.

    `token` is client text: aiohttp hands over header bytes that are not UTF-8
    as lone surrogates, which cannot be encoded, so they are refused here.
    """
    try:
        raw = token.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidTokenError(f"{what} is malformed (not UTF-8)") from None
    try:
        return jwt.decode(raw, key, algorithms=["HS256"], **checks)
    except jwt.ExpiredSignatureError:
        raise InvalidTokenError(f"{what} expired") from None
    except jwt.ImmatureSignatureError:
        raise InvalidTokenError(f"{what} not yet valid (nbf)") from None
    except jwt.MissingRequiredClaimError as exc:
        raise InvalidTokenError(f"{what} lacks the {exc.claim} claim") from None
    except jwt.InvalidAudienceError:
        raise InvalidTokenError(f"{what} aud does not match the api key") from None
    except jwt.InvalidSignatureError:
        raise InvalidTokenError(f"{what} signature is invalid") from None
    except jwt.InvalidAlgorithmError:
        raise InvalidTokenError(f"{what} must be HS256") from None
    except jwt.InvalidTokenError:
        raise InvalidTokenError(f"{what} is malformed") from None
