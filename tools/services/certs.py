"""A throwaway self-signed TLS certificate, made with the ``openssl`` command."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .base import ServiceError

__all__ = ["self_signed_cert"]


def self_signed_cert(
    directory: str | os.PathLike[str],
    names: Sequence[str] = ("localhost", "127.0.0.1", "::1"),
    days: int = 7,
) -> tuple[Path, Path]:
    """A throwaway self-signed certificate: ``(cert.pem, key.pem)`` in ``directory``.

    ECDSA P-256, valid ``days`` days, with ``names`` (DNS names or IP
    addresses) as subjectAltName; the key file is mode 0600.  For tests and
    ``make run`` only: browsers reject it unless told to ignore certificate
    errors.  Made with the ``openssl`` command (Debian package ``openssl``).
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cert, key = d / "cert.pem", d / "key.pem"
    openssl = shutil.which("openssl") or "/usr/bin/openssl"
    out = subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", str(days), "-subj", f"/CN={names[0]}",
            "-addext", "subjectAltName=" + ",".join(_san(n) for n in names),
            "-keyout", str(key), "-out", str(cert),
        ],
        capture_output=True, text=True, timeout=30,
    )
    if out.returncode != 0:
        raise ServiceError(f"openssl could not make a certificate: {out.stderr.strip()}")
    os.chmod(key, 0o600)
    return cert, key


def _san(name: str) -> str:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return f"DNS:{name}"
    return f"IP:{name}"
