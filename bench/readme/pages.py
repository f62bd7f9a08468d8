"""The pages this command owns: README.md's generated blocks, docs/capacity.md's, and
docs/bench/cluster.md whole; rendering them from the records and checking them."""

from __future__ import annotations

import json
import re
from pathlib import Path

from bench import jobs_record, records
from bench.cluster_report import markdown as cluster_markdown
from bench.cluster_report import tables as cluster_tables
from bench.readme.capacity_page import capacity_blocks
from bench.readme.common import DOCS, ROOT, put
from bench.readme.compare import compare_block, load_block
from bench.readme.connect import connect_block
from bench.readme.durable import durable_block
from bench.readme.scale import scale_block


def readme_blocks(docs: Path = DOCS) -> dict[str, str]:
    from tools.chaos import record as chaos_record

    compare_rows = records.read(docs / "compare.jsonl")
    jobs = records.read(docs / "jobs.jsonl")
    return {
        "BENCH-COMPARE": compare_block(compare_rows),
        "BENCH-CONNECT": connect_block(records.read(docs / "connect.jsonl")),
        "BENCH-DURABLE": durable_block(compare_rows, jobs, records.read(docs / "storm.jsonl")),
        "JOBS": jobs_record.markdown(jobs),
        "BENCH-LOAD": load_block(compare_rows, records.read(docs / "slow_client.jsonl")),
        "BENCH-SCALE": scale_block(docs, compare_rows),
        "CHAOS": chaos_record.markdown(chaos_record.read()),
    }


def render(docs: Path = DOCS, root: Path = ROOT) -> dict[Path, str]:
    """Every page this command owns, as the records give it."""
    out: dict[Path, str] = {}
    readme = (root / "README.md").read_text()
    for name, text in readme_blocks(docs).items():
        readme = put(readme, name, text)
    out[root / "README.md"] = readme
    cap = (root / "docs" / "capacity.md").read_text()
    for name, text in capacity_blocks(docs).items():
        cap = put(cap, name, text, "docs/capacity.md")
    out[root / "docs" / "capacity.md"] = cap
    raw = json.loads((docs / "cluster.json").read_text())
    out[docs / "cluster.md"] = cluster_markdown(raw, cluster_tables(raw))
    return out


def _blocks_of(doc: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in
            re.finditer(r"<!-- ([A-Z0-9-]+) -->\n(.*?)<!-- /\1 -->", doc, re.S)}


def performance_section(readme: str) -> str:
    m = re.search(r"^## Performance\n(.*?)(?=^## |\Z)", readme, re.S | re.M)
    return m.group(1) if m else ""


def stray_figures(readme: str) -> list[str]:
    """Lines of README's Performance section holding a figure outside a generated block
    (code spans, links and commands aside)."""
    text = re.sub(r"<!-- ([A-Z0-9-]+) -->\n.*?<!-- /\1 -->", "", performance_section(readme),
                  flags=re.S)
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    out = []
    for line in text.splitlines():
        bare = re.sub(r"`[^`]*`|\]\([^)]*\)|<!--.*?-->", "", line)
        if re.search(r"\d", bare):
            out.append(line.strip())
    return out


def check(docs: Path = DOCS, root: Path = ROOT) -> list[str]:
    """What differs from the records: one line per block or page, and per stray figure."""
    problems = []
    for path, want in render(docs, root).items():
        have = path.read_text()
        if have == want:
            continue
        rel = path.relative_to(root)
        old, new = _blocks_of(have), _blocks_of(want)
        names = [n for n in new if old.get(n) != new[n]]
        if names:
            problems += [f"{rel}: block {n} differs from its records" for n in names]
        else:
            problems.append(f"{rel}: differs from its records")
    problems += [f"README.md: figure outside a generated block in Performance: {line}"
                 for line in stray_figures((root / "README.md").read_text())]
    return problems
