"""``python -m bench.readme [--check]``: every bench figure in the docs, from the records.

Rewrites each generated block (between ``<!-- NAME -->`` and ``<!-- /NAME -->``)
of README.md and docs/capacity.md, and all of docs/bench/cluster.md, from the
committed records alone (docs/bench/*.jsonl, unit-costs.json, cluster.json,
docs/chaos/runs.jsonl). A figure with no record behind it is not written: its
block says so and names the command that records one.

``--check`` writes nothing and exits 1 naming every block that differs from
what the records give, and every figure in README's Performance section that
stands outside a generated block (typed by hand, so no record backs it).
``make test`` runs the check (tests/test_bench_records.py).

One module per concern:

- ``common``: paths, the block syntax, a row's stamp, compare.jsonl's runs averaged
- ``compare``: BENCH-COMPARE and BENCH-LOAD (compare.jsonl, slow_client.jsonl)
- ``connect``: BENCH-CONNECT (connect.jsonl)
- ``durable``: BENCH-DURABLE (compare.jsonl, jobs.jsonl, storm.jsonl)
- ``scale``: BENCH-SCALE, the capacity model against the scale runs
- ``capacity_page``: docs/capacity.md's blocks (with ``bench.capacity_doc``)
- ``pages``: every page rendered (JOBS through ``bench.jobs_record``, CHAOS through
  ``tools.chaos.record``) and the check
- ``__main__``: the command line
"""

from __future__ import annotations

from bench.readme.capacity_page import capacity_blocks
from bench.readme.common import README, put
from bench.readme.compare import load_block
from bench.readme.durable import DURABLE, durable_block
from bench.readme.pages import _blocks_of as _blocks_of  # the blocks a page holds (tests)
from bench.readme.pages import check, render, stray_figures
from bench.readme.scale import validation

__all__ = ["DURABLE", "README", "capacity_blocks", "check", "durable_block", "load_block",
           "put", "render", "stray_figures", "validation"]
