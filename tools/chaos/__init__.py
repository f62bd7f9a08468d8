"""A seeded fault-injection checker of the gateway's delivery promise (README, "Delivery
under faults").

    python -m tools.chaos --seed 7 --duration 60 --profile single|cluster \
        [--clients N] [--herd same|spread] [--burst-max N]

Real processes only: Redis (or a local 3+3 Redis Cluster), PostgreSQL, one
gateway with ``server.workers: 2`` and two more behind nginx with the shipped
``hash $arg_shop consistent`` upstream (also reached directly). Publishers
(HTTP publish API, the Lua helper, plain PUBLISH) and browser-like clients run
while faults drawn from the seed hit the processes, and *storms* make the
interleavings a random schedule rarely makes: tabs of one merchant reconnect,
right after reading a burst event on a process that reads Redis on time, to
one whose link to Redis lags (``lag``). :mod:`tools.chaos.checker` then checks
every client's frames against the invariant (docs there).

Modules: ``records`` (what is logged), ``schedule`` (the seeded plan),
``topology`` (the processes), ``lag`` (the lagging link), ``clients``,
``publishers``, ``faults``, ``storms``, ``events``, ``knowledge``, ``losses``,
``excuses``, ``identity``, ``snapshots``, ``scan``, ``walk`` and ``checker`` (pure;
``checker`` lists the rules), ``report``, ``runner``; ``inputs`` saves what the
checker read beside the report, and ``recheck`` runs the checker on it again;
``repro`` holds deterministic reproductions of what runs found.
"""
