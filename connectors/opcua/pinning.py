"""Trust on first use for OPC UA server certificates: pin the first one seen, refuse a change.

A secure session (``Sign``/``SignAndEncrypt``) is only as good as the check of the server's
certificate. Without a trust list the connection config must say ``trust_on_first_use: true``; then
the certificate the server presents at the first session is written (DER) to
``{certificate_dir}/pinned/{endpoint}.der`` — logged with its SHA-256 — and every later session
must present exactly that certificate. A changed certificate (a replaced server, or someone in the
middle) is refused until a person removes the pinned file (or lists the new certificate in
``trusted_server_certs``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from connectors.opcua.certs import _slug

__all__ = ["CertificateChanged", "PinnedCertificate", "pin_path"]

log = logging.getLogger(__name__)


class CertificateChanged(Exception):  # noqa: N818 - the name says what happened
    """The server presented another certificate than the pinned one."""


def pin_path(certificate_dir: str | Path, endpoint: str) -> Path:
    """Where the pinned certificate of ``endpoint`` is kept.

    >>> pin_path(".nexus/opcua/pki", "opc.tcp://plc:4840/ua")
    PosixPath('.nexus/opcua/pki/pinned/opc.tcp_plc_4840_ua.der')
    """
    return Path(certificate_dir) / "pinned" / f"{_slug(endpoint)}.der"


def _fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


class PinnedCertificate:
    """An asyncua certificate validator (``client.certificate_validator``) that pins on first use."""

    def __init__(self, certificate_dir: str | Path, endpoint: str) -> None:
        self.endpoint = endpoint
        self.path = pin_path(certificate_dir, endpoint)

    async def __call__(self, cert: x509.Certificate, _app: Any) -> None:
        der = cert.public_bytes(Encoding.DER)
        pinned = self._pin(der)
        if pinned != der:
            raise CertificateChanged(
                f"the server's certificate changed (sha256 {_fingerprint(der)}; pinned sha256 "
                f"{_fingerprint(pinned)} in {self.path}): refused. If the server was replaced on purpose, "
                "delete the pinned file or list the new certificate in trusted_server_certs"
            )

    def _pin(self, der: bytes) -> bytes:
        """The pinned certificate, written from ``der`` when there is none yet (exclusive create:
        of two processes connecting for the first time at once, one pins and the other compares)."""
        with contextlib.suppress(FileNotFoundError):
            return self.path.read_bytes()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return self.path.read_bytes()
        with os.fdopen(fd, "wb") as fh:
            fh.write(der)
            fh.flush()
            os.fsync(fh.fileno())
        log.warning(
            "opcua: trust on first use: pinned the certificate of %s (sha256 %s) in %s",
            self.endpoint, _fingerprint(der), self.path,
        )  # fmt: skip
        return der
