"""Application instance certificates: generated once per application URI, reused afterwards.

OPC UA peers check that the certificate's SubjectAltName URI equals the ApplicationUri the
application announces; :func:`ensure_application_certificate` writes a self-signed RSA-2048
certificate (DER) and key (PEM, mode 0600) with exactly that URI into a folder, and returns the
existing pair when it is still valid. A file lock keeps two device clients of one process (or two
processes) from generating at the same time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

from asyncua.crypto import cert_gen
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

log = logging.getLogger(__name__)

VALID_DAYS = 3650
RENEW_BEFORE = dt.timedelta(days=7)


def _slug(uri: str) -> str:
    """A file-name-safe form of an application URI.

    >>> _slug("urn:nexus-edge:client")
    'urn_nexus-edge_client'
    """
    return re.sub(r"[^A-Za-z0-9._-]+", "_", uri).strip("_") or "app"


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    with open(folder / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def certificate_uris(cert: x509.Certificate) -> list[str]:
    """The URIs in a certificate's SubjectAltName."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(san.value.get_values_for_type(x509.UniformResourceIdentifier))


def _usable(cert_file: Path, application_uri: str) -> bool:
    try:
        cert = x509.load_der_x509_certificate(cert_file.read_bytes())
    except (OSError, ValueError):
        return False
    now = dt.datetime.now(dt.UTC)
    return (
        application_uri in certificate_uris(cert)
        and cert.not_valid_before_utc <= now
        and cert.not_valid_after_utc - RENEW_BEFORE > now
    )


def ensure_application_certificate(
    folder: str | Path,
    application_uri: str,
    *,
    server: bool = False,
    host_name: str | None = None,
) -> tuple[Path, Path]:
    """``(certificate, private_key)`` paths for ``application_uri`` in ``folder``, generated if needed.

    The key is kept when present (so a renewed certificate keeps the same key); the certificate is
    (re)generated when missing, expired, about to expire or issued for another URI. ``server=True``
    marks the certificate for server authentication (the simulator), else client authentication.
    """
    d = Path(folder).expanduser()
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    base = _slug(application_uri)
    cert_file, key_file = d / f"{base}.der", d / f"{base}.key.pem"
    with _locked(d):
        if key_file.is_file() and _usable(cert_file, application_uri):
            return cert_file, key_file
        if key_file.is_file():
            loaded = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
            from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

            if not isinstance(loaded, RSAPrivateKey):
                raise ValueError(f"{key_file} is not an RSA private key")
            key = loaded
        else:
            key = cert_gen.generate_private_key()
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(cert_gen.dump_private_key_as_pem(key))
        host = host_name or socket.gethostname()
        usage = [ExtendedKeyUsageOID.SERVER_AUTH] if server else [ExtendedKeyUsageOID.CLIENT_AUTH]
        cert = cert_gen.generate_self_signed_app_certificate(
            key,
            application_uri,
            {},
            [x509.UniformResourceIdentifier(application_uri), x509.DNSName(host)],
            extended=usage,
            days=VALID_DAYS,
        )
        tmp = cert_file.with_suffix(".der.tmp")
        tmp.write_bytes(cert.public_bytes(serialization.Encoding.DER))
        tmp.replace(cert_file)
        log.info("opcua application certificate generated uri=%s path=%s", application_uri, cert_file)
        return cert_file, key_file
