"""The API over HTTPS: ``tls_cert_file``/``tls_key_file`` reach uvicorn, and a client that trusts
the CA (made on the fly) gets answers; one that does not is refused by its own verification."""

from __future__ import annotations

import dataclasses
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from api.app import create_app
from core.settings import Settings
from nexus.embedded import free_port
from nexus.up import uvicorn_config
from tests.broker.certs import Pki, make_pki
from tests.conftest import wait_for


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


@pytest.fixture
def https_api(pki: Pki) -> Iterator[str]:
    settings = Settings(api_port=free_port(), tls_cert_file=pki.server_cert, tls_key_file=pki.server_key)
    server = uvicorn.Server(uvicorn_config(create_app(settings), settings))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # not the main thread
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), timeout=20, what="uvicorn to start")
        assert server.started
        yield f"https://127.0.0.1:{settings.api_port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_the_api_answers_over_https_with_its_certificate(https_api: str, pki: Pki) -> None:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    r = httpx.get(f"{https_api}/health", verify=ctx)
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert r.url.scheme == "https"
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{https_api}/health", verify=ssl.create_default_context(cafile=str(pki.other_ca)))
    with pytest.raises(httpx.TransportError):
        httpx.get(https_api.replace("https://", "http://") + "/health")  # plain HTTP is not served


def test_incomplete_certificate_settings_are_named(pki: Pki) -> None:
    app = create_app(Settings())
    with pytest.raises(ValueError, match="NEXUS_TLS_CERT_FILE and NEXUS_TLS_KEY_FILE go together"):
        uvicorn_config(app, Settings(tls_cert_file=pki.server_cert))
    missing = dataclasses.replace(Settings(), tls_cert_file=Path("/nope.pem"), tls_key_file=pki.server_key)
    with pytest.raises(ValueError, match=r"NEXUS_TLS_CERT_FILE: no such file: /nope\.pem"):
        uvicorn_config(app, missing)
    assert Settings.from_env({"NEXUS_TLS_CERT_FILE": "/c.pem"}).tls_cert_file == Path("/c.pem")
