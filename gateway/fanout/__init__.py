"""The fan-out core: a Redis message becomes one encoded frame (`frames`), which
the merchant's hub topic (`hub`, `topic`; a held envelope's `verdict`) offers to
each of its open streams (`stream`, lag rules in `stream_policy`). Pure asyncio: no
aiohttp views, no Redis."""
