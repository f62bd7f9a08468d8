"""The gateway's errors: `ConfigError` stops start-up (exit code 2); the domain errors
(`GatewayError` and below) become HTTP refusals in `handlers.py` alone."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "GatewayError", "InvalidTokenError", "UnavailableError", "UnknownMerchantError",
]


class ConfigError(Exception):
    """A configuration value is missing or invalid; `key` is dotted (`server.port`)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


class GatewayError(Exception):
    """Base of every error the gateway turns into a refusal."""


class UnknownMerchantError(GatewayError):
    """No active merchant row for the shop."""


class InvalidTokenError(GatewayError):
    """A session token or ticket failed a check; the message names the check."""


class UnavailableError(GatewayError):
    """A dependency (Redis, PostgreSQL) or a capacity limit refuses service for now.

    `handlers.py` answers it 503 and picks the `Retry-After`."""
