"""MQTT over TLS: a real mosquitto with a TLS listener (certificates from a CA made on the fly),
that requires client certificates; the project's MQTT clients connect over ``mqtts://`` with the
CA and client certificate from the settings, and fail with a clear error without them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors.commands import CommandRouter
from connectors.mqtt.publisher import UnsPublisher
from core.settings import Settings
from tests.broker.certs import Pki, make_pki
from tests.broker.mosquitto import broker_folder, mosquitto, needs_mosquitto

pytestmark = [pytest.mark.integration, needs_mosquitto]


@pytest.fixture(scope="module")
def tls() -> Iterator[tuple[int, Pki]]:
    with broker_folder() as folder:
        pki = make_pki(folder)
        conf = (
            "per_listener_settings false\nallow_anonymous true\npersistence false\n"
            "listener {port} 127.0.0.1\n"
            f"cafile {pki.ca}\ncertfile {pki.server_cert}\nkeyfile {pki.server_key}\n"
            "require_certificate true\ntls_version tlsv1.2\n"
        )
        with mosquitto(folder, conf) as port:
            yield port, pki


def router(url: str) -> CommandRouter:
    return CommandRouter(url, {}, require_signature=False, connect_timeout_s=5)


def test_a_project_client_connects_with_the_ca_and_client_certificate_from_the_settings(
    tls: tuple[int, Pki],
) -> None:
    port, pki = tls
    settings = Settings.from_env(
        {
            "NEXUS_MQTT_URL": f"mqtts://127.0.0.1:{port}",
            "NEXUS_MQTT_CA_FILE": str(pki.ca),
            "NEXUS_MQTT_CERT_FILE": str(pki.client_cert),
            "NEXUS_MQTT_KEY_FILE": str(pki.client_key),
        }
    )
    r = router(settings.effective_mqtt_url)
    try:
        r.start()
        assert r.ready
    finally:
        r.close()


@pytest.mark.parametrize("ca", ["none", "other"])
def test_without_the_right_ca_the_error_says_why(tls: tuple[int, Pki], ca: str) -> None:
    port, pki = tls
    query = f"?cert_file={pki.client_cert}&key_file={pki.client_key}"
    if ca == "other":
        query += f"&ca_file={pki.other_ca}"
    r = router(f"mqtts://127.0.0.1:{port}{query}")
    try:
        with pytest.raises(TimeoutError) as err:
            r.start(timeout=3)
    finally:
        r.close()
    message = str(err.value)
    assert "command router: broker mqtts://127.0.0.1" in message
    assert "TLS handshake failed: certificate verify failed" in message, message
    if ca == "none":
        assert "NEXUS_MQTT_CA_FILE" in message


def test_the_uns_publisher_reports_the_tls_failure(
    tls: tuple[int, Pki], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from connectors.mqtt.config import MqttSinkConfig

    port, _ = tls
    config = MqttSinkConfig(
        url=f"mqtts://127.0.0.1:{port}", connect_timeout_s=1.0, spool_dir=str(tmp_path / "spool")
    )
    with caplog.at_level("WARNING"):
        publisher = UnsPublisher(config, {})
        publisher.close()
    assert "TLS handshake failed: certificate verify failed" in caplog.text


def test_missing_tls_files_are_named() -> None:
    with pytest.raises(ValueError, match=r"cannot load TLS files.*ca_file='/nonexistent/ca\.pem'"):
        router("mqtts://127.0.0.1:8883?ca_file=/nonexistent/ca.pem")
