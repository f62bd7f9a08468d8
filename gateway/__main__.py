"""CLI: `python -m gateway [--config PATH]` serves; `check-config` validates and prints;
`publish MERCHANT_ID EVENT DATA` publishes one durable event and prints its id."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

import yaml

from .config import Config, load_config, redacted_dict
from .config.checks import REDIS_NEEDS
from .errors import ConfigError
from .logs import setup_logging
from .redaction import redact_url
from .workers import WORKER_ENV, follow_supervisor, supervise

__all__ = ["main"]

log = logging.getLogger("gateway")

DEFAULT_CONFIG = Path("config/gateway.yaml")


def _config_path(arg: str | None) -> str | None:
    if arg:
        return arg
    if os.environ.get("GATEWAY_CONFIG"):
        return os.environ["GATEWAY_CONFIG"]
    return str(DEFAULT_CONFIG) if DEFAULT_CONFIG.exists() else None


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    parser.add_argument(
        "command", nargs="?", choices=["serve", "check-config", "publish"], default="serve"
    )
    parser.add_argument("arguments", nargs="*", help="publish: MERCHANT_ID EVENT DATA")
    parser.add_argument("--config", help="YAML config file (default: $GATEWAY_CONFIG)")
    parser.add_argument("--key", help="publish: idempotency key (a repeat publishes nothing)")
    parser.add_argument("--seq", help="publish: the event's seq in its job (an integer >= 0)")
    args = parser.parse_args(argv)
    expected = 3 if args.command == "publish" else 0
    if len(args.arguments) != expected:
        parser.error(
            "publish takes MERCHANT_ID EVENT DATA" if expected else "unexpected arguments"
        )
    return args


def _stop_before_serving(signum: int, _frame: object) -> None:
    """SIGTERM/SIGINT before serve() takes them over: nothing to drain yet. As a
    container's PID 1 the default action would ignore SIGTERM until SIGKILL."""
    raise SystemExit(0)


def _run_server(cfg: Config, argv: list[str]) -> int:
    # serving only: `publish` interrupted must not exit 0 ("published")
    signal.signal(signal.SIGTERM, _stop_before_serving)
    signal.signal(signal.SIGINT, _stop_before_serving)
    worker = os.environ.get(WORKER_ENV)
    if cfg.server.workers > 1 and worker is None:
        log.info("redis source: %s (%s)", cfg.redis_source, redact_url(cfg.redis.url))
        return supervise(argv, cfg.server.workers, cfg.server.shutdown_timeout)
    if worker is not None and not follow_supervisor():
        log.warning("worker %s: its supervisor is gone; not starting", worker)
        return 0
    if worker is None:
        log.info("redis source: %s (%s)", cfg.redis_source, redact_url(cfg.redis.url))
    if cfg.redis_source == "built-in default":
        log.warning("no REDIS_URL, redis.url or REDIS_HOST set: using %s", cfg.redis.url)
    import uvloop

    from .serve import serve

    return uvloop.run(serve(cfg, reuse_port=worker is not None))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parse(argv)
    try:
        cfg = load_config(_config_path(args.config), needs_postgres=args.command != "publish")
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if args.command == "publish":
        from .durable.cli import run_publish

        return run_publish(cfg, *args.arguments, key=args.key, seq=args.seq)
    if args.command == "check-config":
        yaml.safe_dump(redacted_dict(cfg), sys.stdout, sort_keys=False)
        for need in REDIS_NEEDS:
            print(f"# redis needs: {need}")
        print(f"# redis source: {cfg.redis_source}")
        return 0
    setup_logging(cfg.logging.level, cfg.logging.format)
    return _run_server(cfg, argv)


if __name__ == "__main__":
    sys.exit(main())
