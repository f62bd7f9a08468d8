"""Everything that speaks pub/sub to Redis: the live path Redis -> broker -> hub.

    connection.py  URL -> client (TLS, AUTH, db), faults, the redis-py reader adapter
    link.py        one subscriber connection: subscribe batches, reconnect, resync
    reader.py      the hot loop: socket bytes -> hub.publish, one message at a time
    cluster.py     Redis Cluster: which primary holds a merchant's sharded channel
    subscriber.py  RedisBroker: counted, batched, lingering subscriptions; supervision
    placement.py   RedisBroker's cluster side: a link per primary, merchants on their slot's
    canary.py      the delivery round trip on a private control channel

Durable history reads and publishes live in `durable/`, not here.
"""

from .subscriber import RedisBroker

__all__ = ["RedisBroker"]
