"""Secure sessions: SignAndEncrypt / Sign with Basic256Sha256 and the Aes policies, users, the trust list."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from connectors.opcua.certs import certificate_uris, ensure_application_certificate
from connectors.opcua.client import OpcUaDeviceClient
from connectors.opcua.pinning import pin_path
from connectors.opcua.simulator import OpcUaSimulator, SimVariable
from core.quality import Quality
from tests.connectors.opcua.opcua_testlib import plan, run

pytestmark = pytest.mark.integration

PASSWORD = "s3cret-Pa55"


@pytest.fixture(scope="module")
def secure_sim(pki: Path) -> Iterator[OpcUaSimulator]:
    """A server that accepts only secure endpoints and username/password sessions."""
    sim = OpcUaSimulator(
        [SimVariable("Oven.Temp", "Double", 180.5)],
        security=(
            "Basic256Sha256_SignAndEncrypt",
            "Aes128Sha256RsaOaep_SignAndEncrypt",
            "Aes256Sha256RsaPss_Sign",
        ),
        users={"operator": PASSWORD},
        cert_dir=pki / "server",
    )
    with sim:
        yield sim


def _read(sim: OpcUaSimulator, pki: Path, **conn: object) -> tuple[list[int], list[float], OpcUaDeviceClient]:
    conn.setdefault("certificate_dir", str(pki / "client"))
    if conn.get("security_mode", "None") != "None" and not conn.get("trust_on_first_use"):
        conn.setdefault("trusted_server_certs", [str(sim.certificate_path)])
    p = plan("oven", sim.endpoint, [sim.node_id("Oven.Temp")], reconnect_min_s=0.05, **conn)

    async def go() -> tuple[list[int], list[float], OpcUaDeviceClient]:
        client = OpcUaDeviceClient(p, metrics=False)
        try:
            b = await client.poll()
        finally:
            await client.close()
        return b.quality.tolist(), b.values.tolist(), client

    return run(go())


@pytest.mark.parametrize(
    ("mode", "policy"),
    [
        ("SignAndEncrypt", "Basic256Sha256"),
        ("SignAndEncrypt", "Aes128Sha256RsaOaep"),
        ("Sign", "Aes256Sha256RsaPss"),
    ],
)
def test_secure_session_with_username_reads(
    secure_sim: OpcUaSimulator, pki: Path, mode: str, policy: str
) -> None:
    assert secure_sim.certificate_path is not None
    q, v, client = _read(
        secure_sim,
        pki,
        security_mode=mode,
        security_policy=policy,
        username="operator",
        password=PASSWORD,
        trusted_server_certs=[str(secure_sim.certificate_path)],
    )
    assert q == [Quality.GOOD] and v == [180.5]
    assert client.stats.connects == 1
    # the generated client certificate carries the application URI, and is reused
    cert_file, key_file = ensure_application_certificate(pki / "client", "urn:nexus-edge:client")
    assert certificate_uris(x509.load_der_x509_certificate(cert_file.read_bytes())) == [
        "urn:nexus-edge:client"
    ]
    assert key_file.stat().st_mode & 0o777 == 0o600


def test_certificate_is_generated_once_and_follows_the_application_uri(pki: Path) -> None:
    folder = pki / "client"
    a = ensure_application_certificate(folder, "urn:nexus-edge:client")
    mtime = a[0].stat().st_mtime_ns
    assert ensure_application_certificate(folder, "urn:nexus-edge:client") == a
    assert a[0].stat().st_mtime_ns == mtime


def test_wrong_password_gives_bad_points_and_a_clear_log_without_the_password(
    secure_sim: OpcUaSimulator, pki: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="connectors.opcua")
    q, v, client = _read(
        secure_sim,
        pki,
        security_mode="SignAndEncrypt",
        security_policy="Basic256Sha256",
        username="operator",
        password="wrong-password-123",
    )
    assert q == [Quality.COMM_ERROR] and math.isnan(v[0])
    assert client.stats.connect_failures == 1
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("connectors.opcua"))
    assert "authentication refused for user 'operator'" in text
    assert "wrong-password-123" not in caplog.text and PASSWORD not in caplog.text


def test_anonymous_and_insecure_sessions_are_refused(secure_sim: OpcUaSimulator, pki: Path) -> None:
    q, _, _ = _read(secure_sim, pki, security_mode="SignAndEncrypt", security_policy="Basic256Sha256")
    assert q == [Quality.COMM_ERROR]
    q, _, _ = _read(secure_sim, pki, username="operator", password=PASSWORD)  # no security: no endpoint
    assert q == [Quality.COMM_ERROR]


def test_server_not_in_the_trust_list_is_refused(
    secure_sim: OpcUaSimulator, pki: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other, _ = ensure_application_certificate(pki / "client", "urn:nexus-edge:client")  # not the server's
    caplog.set_level(logging.WARNING, logger="connectors.opcua")
    q, _, client = _read(
        secure_sim,
        pki,
        security_mode="SignAndEncrypt",
        security_policy="Basic256Sha256",
        username="operator",
        password=PASSWORD,
        trusted_server_certs=[str(other)],
    )
    assert q == [Quality.COMM_ERROR] and client.stats.connect_failures == 1
    assert "BadCertificateUntrusted" in caplog.text


def test_trust_on_first_use_pins_the_certificate_and_refuses_a_changed_one(
    pki: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real asyncua server; then another one (another certificate) on the same endpoint."""
    caplog.set_level(logging.WARNING, logger="connectors.opcua")
    conn = {
        "security_mode": "SignAndEncrypt",
        "security_policy": "Basic256Sha256",
        "trust_on_first_use": True,
        "certificate_dir": str(tmp_path / "client"),
    }
    shared = {"security": ("Basic256Sha256_SignAndEncrypt",), "users": None}
    first = OpcUaSimulator([SimVariable("Oven.Temp", "Double", 180.5)], cert_dir=pki / "tofu-a", **shared)
    with first:
        port = first.port
        q, v, _ = _read(first, pki, **conn)
        assert q == [Quality.GOOD] and v == [180.5]
        pinned = pin_path(tmp_path / "client", first.endpoint)
        assert pinned.read_bytes() == x509.load_der_x509_certificate(
            first.certificate_path.read_bytes()  # type: ignore[union-attr]
        ).public_bytes(Encoding.DER)
        assert "pinned the certificate of" in caplog.text
        q, _, _ = _read(first, pki, **conn)  # the same certificate again: accepted
        assert q == [Quality.GOOD]
    caplog.clear()
    impostor = OpcUaSimulator(
        [SimVariable("Oven.Temp", "Double", -1.0)], port=port, cert_dir=pki / "tofu-b", **shared
    )
    with impostor:
        assert impostor.endpoint == first.endpoint
        q, v, client = _read(impostor, pki, **conn)
    assert q == [Quality.COMM_ERROR] and math.isnan(v[0]) and client.stats.connect_failures == 1
    assert "the server's certificate changed" in caplog.text and str(pinned) in caplog.text
