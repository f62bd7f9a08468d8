"""Shared by the config tests: a config file in tmp_path, load_config on it, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import ISOLATED_ENV

from gateway.config import load_config
from gateway.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
DSN = "postgresql://gw@127.0.0.1:5432/gateway"
BASE_ENV = {"DATABASE_URL": DSN}

REDIS_PW = "r3disS3cretPw"
PG_PW = "pgS3cretPw"
TOKEN_SECRET = "sessi0nTokenS3cret"
API_KEY = "apiK3yS3cret"
PUBLISH_KEY = "publishK3yS3cret"
SECRETS = (REDIS_PW, PG_PW, TOKEN_SECRET, API_KEY, PUBLISH_KEY)


def write(tmp_path: Path, data: Any, name: str = "gateway.yaml") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(path)


def load(tmp_path: Path, data: Any, env: dict[str, str] | None = None) -> Any:
    return load_config(write(tmp_path, data), {**BASE_ENV, **(env or {})})


def config_error(tmp_path: Path, data: Any, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, data, env)
    return info.value



def run_cli(
    args: list[str], env: dict[str, str], cwd: Path = REPO_ROOT
) -> subprocess.CompletedProcess[str]:
    child = {k: v for k, v in os.environ.items() if k not in ISOLATED_ENV}
    child["PYTHONPATH"] = str(REPO_ROOT)
    child.update(env)
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=str(cwd),
        env=child,
        capture_output=True,
        text=True,
        timeout=30,
    )


def secret_env() -> dict[str, str]:
    return {
        "REDIS_URL": f"redis://admin:{REDIS_PW}@127.0.0.1:6379/0",
        "DATABASE_URL": f"postgresql://gw:{PG_PW}@127.0.0.1:5432/gateway",
        "GW_TOKEN_SECRET": TOKEN_SECRET,
    }


def secret_config(tmp_path: Path) -> str:
    return write(
        tmp_path,
        {
            "server": {"port": 9123},
            "auth": {"session_token_secret": "${GW_TOKEN_SECRET}", "api_key": API_KEY},
        },
    )


def one_line_exit_2(res: subprocess.CompletedProcess[str], *names: str) -> str:
    """The single stderr line of a refused config; it names each of ``names``."""
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]
