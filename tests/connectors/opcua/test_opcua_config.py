"""Configuration models: cross-field checks, field-naming errors, frozen models."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from connectors.opcua.config import OpcUaConnection, OpcUaDevicePlan, OpcUaTagAddress

EP = "opc.tcp://127.0.0.1:4840"


def test_security_mode_and_policy_go_together() -> None:
    ok = OpcUaConnection(
        endpoint=EP, security_mode="Sign", security_policy="Aes256Sha256RsaPss", trust_on_first_use=True
    )
    assert ok.security_policy == "Aes256Sha256RsaPss"
    with pytest.raises(ValidationError, match="security_mode 'Sign' needs a security_policy"):
        OpcUaConnection(endpoint=EP, security_mode="Sign")
    with pytest.raises(ValidationError, match="needs security_mode 'Sign' or 'SignAndEncrypt'"):
        OpcUaConnection(endpoint=EP, security_policy="Basic256Sha256")
    with pytest.raises(ValidationError, match="security_policy"):
        OpcUaConnection(endpoint=EP, security_mode="Sign", security_policy="Basic128Rsa15")  # type: ignore[arg-type]


def test_a_secure_mode_needs_a_trust_list_or_trust_on_first_use() -> None:
    secure = {"endpoint": EP, "security_mode": "SignAndEncrypt", "security_policy": "Basic256Sha256"}
    with pytest.raises(
        ValidationError, match="without trusted_server_certs would accept any server certificate"
    ):
        OpcUaConnection(**secure)  # type: ignore[arg-type]
    assert OpcUaConnection(**secure, trust_on_first_use=True).trust_on_first_use  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="not both"):
        OpcUaConnection(**secure, trust_on_first_use=True, trusted_server_certs=["/s.der"])  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="trust_on_first_use needs security_mode"):
        OpcUaConnection(endpoint=EP, trust_on_first_use=True)


def test_credentials_and_endpoint() -> None:
    c = OpcUaConnection(endpoint=EP, username="op", password="s3cret")  # type: ignore[arg-type]
    assert "s3cret" not in repr(c) and c.password is not None and c.password.get_secret_value() == "s3cret"
    with pytest.raises(ValidationError, match="password is set but username is not"):
        OpcUaConnection(endpoint=EP, password="x")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"endpoint must be an opc\.tcp:// URL, got .http://x."):
        OpcUaConnection(endpoint="http://x")
    with pytest.raises(ValidationError, match="reconnect_max_s"):
        OpcUaConnection(endpoint=EP, reconnect_min_s=5, reconnect_max_s=1)
    with pytest.raises(ValidationError, match=r"extra_forbidden|Extra inputs"):
        OpcUaConnection(endpoint=EP, hots="x")  # type: ignore[call-arg]
    c = OpcUaConnection(
        endpoint=EP,
        security_mode="SignAndEncrypt",
        security_policy="Basic256Sha256",
        trusted_server_certs=["/pki/server.der"],  # type: ignore[arg-type]
    )
    assert c.trusted_server_certs == ("/pki/server.der",)
    with pytest.raises(ValidationError):
        c.model_copy(update={}).__setattr__("endpoint", "opc.tcp://other:4840")


def test_tag_address_and_plan() -> None:
    a = OpcUaTagAddress(node_id="ns=2;s=Line1.Temp", sampling_interval_ms=100, queue_size=5, deadband_abs=0.5)
    assert a.queue_size == 5
    with pytest.raises(ValidationError, match="node_id 'Temp' is not an OPC UA node id"):
        OpcUaTagAddress(node_id="Temp")
    with pytest.raises(ValidationError, match="deadband_abs"):
        OpcUaTagAddress(node_id="i=2258", deadband_abs=-1)
    conn = OpcUaConnection(endpoint=EP)
    with pytest.raises(ValueError, match="tag id 1 appears twice"):
        OpcUaDevicePlan("d", conn, 1.0, ((1, a), (1, a)))
    with pytest.raises(ValueError, match=r"`writable` names tag ids not in `tags`: \[9\]"):
        OpcUaDevicePlan("d", conn, 1.0, ((1, a),), frozenset({9}))
    with pytest.raises(ValueError, match="`poll_interval_s` must be > 0, got 0"):
        OpcUaDevicePlan("d", conn, 0, ((1, a),))
