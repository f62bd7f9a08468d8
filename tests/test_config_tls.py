"""Redis TLS files named in rediss:// URLs: read and checked when the config loads."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from config_support import (
    REDIS_PW,
    config_error,
    load,
    one_line_exit_2,
    run_cli,
    secret_config,
    secret_env,
)

from tools.services import self_signed_cert


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, Path]:
    """A real certificate and key, another key, an encrypted key, garbage; by name."""
    cert, key = self_signed_cert(tmp_path / "a")
    _, other_key = self_signed_cert(tmp_path / "b")
    encrypted = tmp_path / "encrypted.pem"
    subprocess.run(
        ["openssl", "pkey", "-in", str(key), "-aes256", "-passout", f"pass:{REDIS_PW}x",
         "-out", str(encrypted)],
        check=True, capture_output=True, timeout=30,
    )
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(bytes(range(256)) * 4)
    fake = tmp_path / "fake.pem"
    fake.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    return {"cert": cert, "key": key, "other_key": other_key, "encrypted": encrypted,
            "garbage": garbage, "fake": fake, "dir": tmp_path, "absent": tmp_path / "absent.pem"}


def tls_url(files: dict[str, Path], **query: str) -> str:
    args = "&".join(f"{k}={files.get(v, v)}" for k, v in query.items())
    return f"rediss://:{REDIS_PW}@127.0.0.1:6380/0?{args}"


def test_good_tls_files_are_accepted(tmp_path: Path, tls_files: dict[str, Path]) -> None:
    for query in (
        {"ssl_ca_certs": "cert"},
        {"ssl_ca_certs": "cert", "ssl_certfile": "cert", "ssl_keyfile": "key"},
        {"ssl_certfile": "cert", "ssl_keyfile": "encrypted", "ssl_password": f"{REDIS_PW}x"},
        {"ssl_ca_path": "dir"},
    ):
        url = tls_url(tls_files, **query)
        assert load(tmp_path, {}, {"REDIS_URL": url}).redis.url == url


@pytest.mark.parametrize(
    ("query", "option", "words"),
    [
        ({"ssl_ca_certs": "absent"}, "ssl_ca_certs", "cannot read"),
        ({"ssl_ca_certs": "dir"}, "ssl_ca_certs", "cannot read"),
        ({"ssl_ca_certs": "garbage"}, "ssl_ca_certs", "no PEM certificate"),
        ({"ssl_ca_certs": "fake"}, "ssl_ca_certs", "no PEM certificate"),
        ({"ssl_ca_certs": "key"}, "ssl_ca_certs", "no PEM certificate"),
        ({"ssl_ca_path": "absent"}, "ssl_ca_path", "not a readable directory"),
        ({"ssl_certfile": "garbage", "ssl_keyfile": "key"}, "ssl_certfile", "no PEM certificate"),
        ({"ssl_certfile": "cert", "ssl_keyfile": "absent"}, "ssl_keyfile", "cannot read"),
        ({"ssl_certfile": "cert", "ssl_keyfile": "garbage"}, "ssl_keyfile", "no PEM private key"),
        ({"ssl_certfile": "cert", "ssl_keyfile": "other_key"}, "ssl_keyfile", "no PEM private"),
        ({"ssl_certfile": "cert"}, "ssl_certfile", "no PEM private key"),
        ({"ssl_keyfile": "key"}, "ssl_keyfile", "needs ssl_certfile"),
        ({"ssl_certfile": "cert", "ssl_keyfile": "encrypted"}, "ssl_keyfile", "ssl_password"),
        ({"ssl_certfile": "cert", "ssl_keyfile": "encrypted", "ssl_password": REDIS_PW},
         "ssl_keyfile", "ssl_password"),
    ],
)
def test_bad_tls_files_are_config_errors(
    tmp_path: Path, tls_files: dict[str, Path], query: dict[str, str], option: str, words: str
) -> None:
    err = config_error(tmp_path, {}, {"REDIS_URL": tls_url(tls_files, **query)})
    assert err.key == "redis.url"
    assert str(err).startswith(f"redis.url: {option}: "), str(err)
    assert words in str(err)
    assert REDIS_PW not in str(err)


@pytest.mark.parametrize("command", [["check-config"], []])
@pytest.mark.parametrize("bad", ["garbage", "absent"])
def test_a_bad_tls_file_exits_2_in_one_line(
    tmp_path: Path, tls_files: dict[str, Path], bad: str, command: list[str]
) -> None:
    url = tls_url(tls_files, ssl_ca_certs=bad)
    env = {**secret_env(), "REDIS_URL": url}
    res = run_cli([*command, "--config", secret_config(tmp_path)], env)
    one_line_exit_2(res, "redis.url", "ssl_ca_certs", str(tls_files[bad]))
    assert REDIS_PW not in res.stderr + res.stdout
