"""A seeded fault-injection checker of the gateway's delivery promise (issue 17).

    python -m tools.chaos --seed 7 --duration 60 --profile single|cluster

Real processes only: Redis (or a local 3+3 Redis Cluster), PostgreSQL, one
gateway with ``server.workers: 2`` and two more behind nginx with the shipped
``hash $arg_shop consistent`` upstream. Publishers (HTTP publish API, the Lua
helper, plain PUBLISH) and browser-like clients run while faults drawn from
the seed hit the processes; :mod:`tools.chaos.checker` then checks every
client's frames against the invariant (docs in :mod:`tools.chaos.checker`).

Modules: ``records`` (what is logged), ``schedule`` (the seeded plan),
``topology`` (the processes), ``clients``, ``publishers``, ``faults``,
``checker`` (pure), ``report``, ``runner``.
"""
