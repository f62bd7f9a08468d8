"""The HTTP layer under aiohttp's web app: bodies never inflated, error pages that quote nothing.

aiohttp, by default, inflates a `Content-Encoding: gzip|deflate|br` body as it
is read, also while it "lingers" over the unread body of a request it has
already answered: a 1 MB gzip bomb then costs seconds of CPU on the event loop
whatever the endpoint. The gateway reads raw bytes only (`auto_decompress`
off), lingers at most `_LINGER_S` over an unread body, and answers a
malformed request with a fixed JSON page instead of aiohttp's, which quotes
the offending request line or header (a token sent by mistake would come back).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

__all__ = ["LINGER_S", "GatewayRunner", "fixed_error_page"]

LINGER_S = 2.0  # longest the server reads (and drops) the rest of a body it did not read

_PAGES = {
    400: ("invalid_request", "malformed HTTP request"),
    413: ("too_large", "request head too large"),
    431: ("too_large", "request header fields too large"),
    500: ("internal_error", "internal server error"),
}


def fixed_error_page(status: int) -> web.Response:
    """The JSON page of a request aiohttp could not hand to the app: quotes nothing."""
    code, message = _PAGES.get(status, _PAGES[400] if status < 500 else _PAGES[500])
    body = json.dumps({"error": code, "message": message}).encode()
    response = web.Response(status=status, body=body, content_type="application/json")
    response.force_close()
    return response


class _Handler(RequestHandler):
    """aiohttp's connection handler with `fixed_error_page` instead of its echoing page."""

    __slots__ = ()  # as aiohttp's: no instance dict per connection

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, None)  # logs (logs.py shortens it), checks
        return fixed_error_page(status)


class _Server(Server):
    def __call__(self) -> RequestHandler:
        return _Handler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """`web.AppRunner` whose connections never inflate bodies and never echo requests."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        kwargs.setdefault("auto_decompress", False)
        kwargs.setdefault("lingering_time", LINGER_S)
        super().__init__(app, **kwargs)

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = _Server  # same state; only which handler class it builds
        return server
