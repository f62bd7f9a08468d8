"""asyncio helpers the gateway runs on, none of them knowing about merchants or streams.

- `supervision.py`   background loops restarted when they fail, and stopped in order;
- `deadlines.py`     deadlines that time lost by a congested event loop does not use up;
- `single_flight.py` one run of a keyed operation shared by its concurrent callers;
- `token_bucket.py`  a rate limit that delays the excess, up to a bound, before refusing;
- `gc_policy.py`     garbage-collection settings that keep pauses short.
"""
