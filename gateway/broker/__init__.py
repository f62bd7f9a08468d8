"""Everything that speaks to Redis.

    connection.py  URL -> client (TLS, AUTH, db), faults, the redis-py reader adapter
    reader.py      the hot loop: socket bytes -> hub.publish, one message at a time
    subscriber.py  RedisBroker: counted, batched, lingering subscriptions; supervision
    canary.py      the delivery round trip on a private control channel
"""

from .subscriber import RedisBroker

__all__ = ["RedisBroker"]
