"""What ``make run`` prints once the gateway answers (tools/run_local.py).

The banner tells the truth about the run: how long the gateway took to start
and how long ``make run`` took in all (installs included, from
``MAKE_RUN_STARTED``, set by the Makefile); whether /health is green (a wrong
``REDIS_URL`` leaves the gateway live but every stream 503); and the demo
shop only when this run seeded it (with your own ``DATABASE_URL`` it does not
exist, and the demo would answer 403).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from tools.run_config import RunSettings, redis_cli_command

DEMO_MERCHANT = "demo-merchant"
DEMO_SHOP = "demo.myshopify.com"


def _health(base: str) -> tuple[int | None, Any]:
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=3) as r:
            return int(r.status), json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"{}")
        except ValueError:
            return e.code, {}
    except (OSError, ValueError):
        return None, {}


def not_ready(base: str, within: float = 5.0) -> str | None:
    """None once /health is 200 (polled up to `within` s); else what it reports."""
    deadline = time.monotonic() + within
    while True:
        status, body = _health(base)
        if status == 200:
            return None
        if time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    failing = [f"{dep}: {info.get('error') or info.get('status')}"
               for dep, info in (body.items() if isinstance(body, dict) else [])
               if isinstance(info, dict) and info.get("status") not in (None, "ok")]
    return f"/health answers {status}" + (f" ({', '.join(failing)})" if failing else "")


def elapsed_text(seconds: float, environ: Mapping[str, str], now: float) -> str:
    """'in 1.9s' plus make run's total when the Makefile said when it started."""
    text = f"in {seconds:.1f}s"
    try:
        started = float(environ.get("MAKE_RUN_STARTED", ""))
    except ValueError:
        return text
    total = now - started
    if total < seconds + 1:
        return text
    return f"{text} ({total:.0f}s since `make run` began, installs included)"


def usage(pid: int, base: str, settings: RunSettings, env: Mapping[str, str], seeded: bool,
          elapsed: str, problem: str | None) -> str:
    """The banner: state, then how to open a stream and publish."""
    merchant, shop = (DEMO_MERCHANT, DEMO_SHOP) if seeded else ("MERCHANT_ID", "YOUR-SHOP")
    stream = f"{base}{settings.path}?shop={shop if seeded else shop + '.myshopify.com'}"
    channel = settings.channel.format(merchant_id=merchant, event="progress")
    publish = "SPUBLISH" if settings.cluster else "PUBLISH"
    cli = redis_cli_command(env["REDIS_URL"], settings.cluster)
    payload = """'{"jobId":"job-1","percent":42}'"""
    if problem is None:
        head = f"Gateway is up (pid {pid}) {elapsed}.\n\n"
    else:
        head = (f"Gateway is up (pid {pid}) {elapsed} but NOT READY: {problem}.\n"
                "  Until that is fixed /health and every stream answer 503; "
                "check REDIS_URL / DATABASE_URL.\n\n")
    if seeded:
        sql = "INSERT INTO merchants (id, shop_domain) VALUES ('m-2', 'shop2.myshopify.com')"
        demo = f"  Demo page (progress bar for {DEMO_SHOP}):\n    {base}/demo/\n\n"
        extra = f"  Add a merchant:\n    psql '{env['DATABASE_URL']}' -c \"{sql}\"\n\n"
    else:
        demo = ""
        extra = ("  Your DATABASE_URL was not seeded: use a shop and merchant id from its\n"
                 "  merchants table (the demo shop does not exist there and would get 403).\n\n")
    return (
        "\n" + head + demo
        + f"  Open the stream:\n    curl -N '{stream}'\n\n"
        + f"  Publish an event:\n    {cli} {publish} '{channel}' {payload}\n\n"
        + extra
        + f"  Health: {base}/health   Metrics: {base}/metrics\n\n"
        "Press Ctrl-C to stop the gateway and the services started for it.\n"
    )
