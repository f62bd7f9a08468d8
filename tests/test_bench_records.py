"""Bench records: README's and the docs' bench figures come from docs/bench/ records.

Fast and without services: ``python -m bench.readme --check`` over the committed
records, the check catching a hand-edited figure, the capacity model's tolerance
over every recorded scale row, and the record stamp.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from bench import readme, records
from bench.validate import TOLERANCE_PCT, within

ROOT = Path(__file__).resolve().parent.parent


def _copy_pages(tmp: Path) -> Path:
    (tmp / "docs").mkdir()
    shutil.copy(ROOT / "README.md", tmp / "README.md")
    shutil.copy(ROOT / "docs" / "capacity.md", tmp / "docs" / "capacity.md")
    return tmp


def test_readme_and_docs_match_the_committed_records() -> None:
    problems = readme.check()
    assert not problems, "\n".join([*problems, "run: python -m bench.readme"])


def test_a_hand_edited_figure_fails_the_check_naming_its_block(tmp_path) -> None:
    root = _copy_pages(tmp_path)
    page = root / "README.md"
    text = page.read_text()
    compare = readme._blocks_of(text)["BENCH-COMPARE"]
    row = next(line for line in compare.splitlines() if line.startswith("| gateway1 |"))
    edited = row.replace("| gateway1 | ", "| gateway1 | 0", 1)
    page.write_text(text.replace(row, edited).replace(
        "### Under load\n", "### Under load\n\nThe gateway takes 9 µs per delivery.\n"))
    problems = readme.check(root=root)
    assert "README.md: block BENCH-COMPARE differs from its records" in problems, problems
    assert any("outside a generated block" in p and "9 µs" in p for p in problems), problems
    assert not any("capacity.md" in p for p in problems), problems
    cap = root / "docs" / "capacity.md"
    cap.write_text(cap.read_text().replace("was 0.997.", "was 0.95."))
    assert "docs/capacity.md: block CLUSTER differs from its records" in readme.check(root=root)


def test_the_capacity_model_meets_its_tolerance_on_every_recorded_scale_row() -> None:
    checked = readme.validation()
    assert {label for label, _, _ in checked} >= {"15k", "50k"}
    for label, row, c in checked:
        assert within(c), (f"{label} at {row['rate']:g} msg/s: CPU {c['cpu_err_pct']:+} %, "
                           f"memory {c['mem_err_pct']:+} % (tolerance {TOLERANCE_PCT})")


def test_records_are_stamped_and_a_rerun_replaces_only_its_own_rows(tmp_path) -> None:
    path = tmp_path / "x.jsonl"
    records.write("b", [{"v": 1}], path, "python -m bench.b", {"n": 2, "out": tmp_path})
    records.write("b", [{"v": 2}], path, "python -m bench.b --fast", None)
    records.write("b", [{"v": 3}], path, "python -m bench.b", {"n": 3})
    rows = records.read(path)
    assert [r["v"] for r in rows] == [2, 3]
    r = rows[1]
    assert r["params"] == {"n": 3} and r["command"] == "python -m bench.b"
    assert r["commit"] and r["ts"].endswith("Z")
    assert set(r["machine"]) == {"cores", "kernel", "cpu_model", "python"}
    json.dumps(rows)


def test_missing_records_say_so_and_name_the_command() -> None:
    text = readme.load_block([], [])
    assert text.count("no committed record yet") == 3
    assert "`python -m bench --step --duration 5`" in text
    durable = readme.durable_block([], [], [])
    assert "`python -m bench.storm --query-timeout 6`" in durable
    assert "`python -m bench --systems gateway1,gateway1-durable,gateway1-durable-http`" in durable


def test_recorded_rows_become_text() -> None:
    def row(system: str, rate: float, us: float) -> dict:
        return {"bench": "compare", "command": readme.DURABLE, "ts": "2026-12-07T00:00:00Z",
                "commit": "abc1234", "system": system, "rate": rate, "streams": 2000,
                "merchants": 200, "us_per_event_server": us, "us_per_event": us + 2,
                "p99_ms": 3.0}
    rows = [row("gateway1", 1000.0, 10.0), row("gateway1-durable", 1000.0, 12.0)]
    text = readme.durable_block(rows, [], [])
    assert "durable over plain, was 1.20 at 1000 msg/s (12.0 vs 10.0 µs)" in text, text
    assert "at abc1234" in text
    storm = {"bench": "storm", "command": "python -m bench.storm", "ts": "2026-12-07T00:00:00Z",
             "streams": 100, "merchants": 10, "missed": 20, "workers": 1,
             "query_timeout": "default", "replayed_streams": 100, "resyncs": 0,
             "out_of_order": 0, "history_reads_redis": 10, "replay_p50_s": 1.0,
             "replay_p99_s": 2.0, "replay_max_s": 2.5, "ready_after_s": 0.5, "refused": 0,
             "gateway_cpu_s": 0.06, "client_cpu_s": 0.1}
    assert "p99 2.0 s" in readme.durable_block([], [], [storm])
