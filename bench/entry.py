"""How a measuring bench entry point starts: its arguments, a re-run as a child
under ``--gateway-src`` when given, the open-file limit raised."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from bench.gateway_src import rerun_under
from bench.streams import raise_nofile

__all__ = ["run_main"]


def run_main(module: str, parse_args: Callable[[list[str]], argparse.Namespace],
             body: Callable[[list[str], argparse.Namespace], int],
             argv: list[str] | None) -> int:
    """``python -m module``'s exit code: ``argv`` (the command line's when None) parsed;
    with ``--gateway-src``, that of the child measuring that gateway; else ``body``'s,
    given ``argv`` and the arguments, once the open-file limit is raised."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    code = rerun_under(args.gateway_src, module, argv)  # --gateway-src: a child measures
    if code is not None:
        return code
    raise_nofile()
    return body(argv, args)
