"""The domain errors; `handlers.py` alone maps them to HTTP refusals."""

from __future__ import annotations

__all__ = ["GatewayError", "InvalidTokenError", "UnavailableError", "UnknownMerchantError"]


class GatewayError(Exception):
    """Base of every error the gateway turns into a refusal."""


class UnknownMerchantError(GatewayError):
    """No active merchant row for the shop."""


class InvalidTokenError(GatewayError):
    """A session token or ticket failed a check; the message names the check."""


class UnavailableError(GatewayError):
    """A dependency (Redis, PostgreSQL) or a capacity limit refuses service for now."""

    def __init__(self, message: str, retry_after_s: int = 2) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
