"""Session tokens (Shopify-style HS256 JWTs) and the gateway's own stream tickets."""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from typing import Any

import jwt

from .config import AuthConfig
from .errors import InvalidTokenError

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
        options = {"require": ["exp", "dest"], "verify_aud": bool(self._cfg.api_key)}
        try:
            claims = jwt.decode(
                token,
                self._cfg.session_token_secret,
                algorithms=["HS256"],
                audience=self._cfg.api_key or None,
                leeway=_LEEWAY_S,
                options=options,  # type: ignore[arg-type]
            )
        except jwt.ExpiredSignatureError:
            raise InvalidTokenError("session token expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidTokenError("session token not yet valid (nbf)") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidTokenError(f"session token lacks the {exc.claim} claim") from None
        except jwt.InvalidAudienceError:
            raise InvalidTokenError("session token aud does not match the api key") from None
        except jwt.InvalidSignatureError:
            raise InvalidTokenError("session token signature is invalid") from None
        except jwt.InvalidAlgorithmError:
            raise InvalidTokenError("session token must be HS256") from None
        except jwt.InvalidTokenError:
            raise InvalidTokenError("session token is malformed") from None
        if claims.get("dest") != f"https://{shop}":
            raise InvalidTokenError("session token dest does not match the shop") from None
        return claims

    def issue_ticket(self, shop: str) -> tuple[str, int]:
        ttl = int(self._cfg.ticket_ttl)
        claims = {"typ": _TICKET_TYPE, "shop": shop, "exp": math.ceil(time.time()) + ttl}
        return jwt.encode(claims, self._ticket_key, algorithm="HS256"), ttl

    def check_ticket(self, ticket: str, shop: str) -> None:
        try:
            claims = jwt.decode(
                ticket, self._ticket_key, algorithms=["HS256"], options={"require": ["exp"]}
            )
        except jwt.ExpiredSignatureError:
            raise InvalidTokenError("ticket expired") from None
        except jwt.InvalidSignatureError:
            raise InvalidTokenError("ticket signature is invalid") from None
        except jwt.InvalidTokenError:
            raise InvalidTokenError("ticket is malformed") from None
        if claims.get("typ") != _TICKET_TYPE:
            raise InvalidTokenError("ticket is malformed")
        if claims.get("shop") != shop:
            raise InvalidTokenError("ticket is for another shop")
