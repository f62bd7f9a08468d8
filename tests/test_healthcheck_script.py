"""tools/healthcheck.py (the image's HEALTHCHECK) probes the configured address."""

from __future__ import annotations

from pathlib import Path

from tools.healthcheck import live_url


def _config(tmp_path: Path, server: str) -> dict[str, str]:
    path = tmp_path / "gateway.yaml"
    path.write_text(f"server:\n{server}")
    return {"GATEWAY_CONFIG": str(path)}


def test_default_without_a_config(tmp_path: Path) -> None:
    env = {"GATEWAY_CONFIG": str(tmp_path / "missing.yaml")}
    assert live_url(env) == "http://127.0.0.1:8080/health/live"


def test_port_and_wildcard_host_from_the_config(tmp_path: Path) -> None:
    env = _config(tmp_path, "  host: 0.0.0.0\n  port: 9090\n")
    assert live_url(env) == "http://127.0.0.1:9090/health/live"
    env = _config(tmp_path, "  host: '::'\n  port: 9091\n")
    assert live_url(env) == "http://[::1]:9091/health/live"


def test_variables_expand_as_the_gateway_does(tmp_path: Path) -> None:
    env = _config(tmp_path, "  port: ${PORT:-8081}\n")
    assert live_url(env) == "http://127.0.0.1:8081/health/live"
    assert live_url({**env, "PORT": "7000"}) == "http://127.0.0.1:7000/health/live"


def test_explicit_url_wins(tmp_path: Path) -> None:
    env = {**_config(tmp_path, "  port: 9090\n"), "GATEWAY_HEALTH_URL": "http://[::1]:1/x"}
    assert live_url(env) == "http://[::1]:1/x"
