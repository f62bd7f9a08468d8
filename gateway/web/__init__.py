"""The gateway's seams into aiohttp and aiohttp-sse, each held to the library by a
tripwire test (tests/test_library_adapters.py).

- `server.py`  `GatewayRunner`: aiohttp's server reading raw bodies only, lingering
               briefly, answering malformed requests with pages that quote nothing;
- `sse.py`     `SharedHeartbeatResponse`: aiohttp-sse without a ping task per stream;
- `writer.py`  `payload_writer`: the parts of aiohttp's payload writer a stream
               writes through, as a typed Protocol checked once per stream;
- `stream_only.py` `stream_only`: a stream's connection keeps no parser, request
               queue or keep-alive timer once its headers are sent;
- `forwarded.py` `client_address`: the client behind trusted proxies (X-Forwarded-For).
"""
