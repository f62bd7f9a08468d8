"""``python -m bench.readme [--check]``: every bench figure in the docs, from the records.

Without ``--check`` it rewrites every page ``bench.readme.pages`` renders whose text
differs; either way it exits 1 naming each figure typed by hand in README's
Performance section (outside a generated block, so no record backs it).
"""

from __future__ import annotations

import argparse
import sys

from bench.readme.common import README, ROOT, SELF
from bench.readme.pages import check, render, stray_figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.readme", description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 naming each block that differs from the records")
    a = p.parse_args(argv)
    if a.check:
        problems = check()
        for line in problems:
            print(line, file=sys.stderr)
        if problems:
            print(f"regenerate with {SELF[1:-1]} (figures come from docs/bench/ records)",
                  file=sys.stderr)
        return 1 if problems else 0
    for path, text in render().items():
        if path.read_text() != text:
            path.write_text(text)
            print(f"updated {path.relative_to(ROOT)}")
    problems = [f"README.md: figure outside a generated block in Performance: {line}"
                for line in stray_figures(README.read_text())]
    for line in problems:
        print(line, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
