"""Durable events: published once into a Redis history, replayed to any reconnect.

The durable path: a publisher (`publisher.py`, the HTTP API or the CLI) runs
the one script `publish.lua`, which appends the event to the merchant's Redis
history and publishes the enveloped event on its channel in one step; the live
path (`broker/` -> `hub`) delivers it like any other event; a reconnect with a
durable Last-Event-ID is resumed by `replay.py` from the ring or the history.

- `ids.py`        epoch:offset ids, the channel envelope, keys, data encoding (pure);
- `publish.lua`, `publisher.py`  the publish script and its one runner, `Publisher`
                  and `AsyncPublisher` (public: `from gateway.durable.publisher import ...`);
- `history.py`    history reads and the gateway's own publishes;
- `redis_reads.py`  their plumbing: one resend, a MULTI's replies, a stream entry;
- `history_checks.py`, `envelopes.py`  reads that check a live message against the
                  history, and the hub's batched checks that make them;
- `replay.py`     resuming a reconnect: ring, then Redis history;
- `catch_up.py`   where a replay or snapshot goes among the live events queued
                  meanwhile (pure; the stream applies it);
- `jobs.py`, `snapshots.py`  job state (pure) and the `snapshot` frame read from it;
- `api.py`, `body.py`, `gate.py`  `POST {path}/publish`: view, body, publish budget;
- `cli.py`        `python -m gateway publish`.

Nothing here imports `broker/`: the Redis clients are handed in (`app.py`).
`ids.py` and `publisher.py` need only redis-py, so they can be vendored.
"""
