"""Event gateway: Redis pub/sub fanned out to Server-Sent Events, per merchant.

The live path: Redis -> `broker/` -> `fanout/` (`hub` -> `stream`) -> socket. The durable
path: publishers -> `durable/` (the publish script) -> Redis history + channel;
a reconnect -> `durable/replay` -> `hub`. `access/` decides who may open a stream;
`runtime/` holds the asyncio helpers,
`web/` the seams into aiohttp, `config/` the configuration; README.md's
"Source layout" names every module.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
