"""The compose deployment, checked by parsing (``docker compose config`` is not available here):
services, networks, published ports (the API and Grafana only, on 127.0.0.1 by default), health
checks, named volumes for the database, spool and recovery, secrets only from ``.env``, the non-root
image, and every file the compose files refer to exists."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "deploy" / "compose"
ONE_SHOT = {"broker-init", "db-roles"}
PUBLISHED = {"nexus", "grafana"}


class _Loader(yaml.SafeLoader):
    """YAML with compose's merge tags (``!override``, ``!reset``) kept as plain values."""


def _plain(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


for _tag in ("!override", "!reset"):
    _Loader.add_constructor(_tag, _plain)


def load(name: str) -> dict[str, Any]:
    return yaml.load((COMPOSE / name).read_text(), Loader=_Loader)


def env_example() -> dict[str, str]:
    values = {}
    for line in (COMPOSE / ".env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


_VAR = re.compile(r"\$\{([A-Z0-9_]+)(?::?([-?])([^}]*))?\}")


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}``; ``$$`` is a literal ``$``."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        value = env.get(name, "")
        if op == "-" and not value:
            return arg
        if op == "?" and not value:
            raise ValueError(f"{name}: {arg}")
        return value

    return _VAR.sub(one, text.replace("$$", "\0")).replace("\0", "$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load("docker-compose.yml")


def test_services_and_networks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {
        "timescaledb",
        "broker-init",
        "broker",
        "nexus",
        "db-roles",
        "dashboards",
        "grafana",
        "simulator",
    }
    assert services["simulator"]["profiles"] == ["simulator"]
    assert compose["networks"]["backend"] == {"internal": True}
    # the database and the broker only on the internal network: no route out, nothing published
    for name in ("timescaledb", "broker"):
        assert services[name]["networks"] == ["backend"]
    assert services["nexus"]["command"] == ["up"]  # API + supervisor; flows are its children


def test_only_api_and_grafana_are_published_on_loopback(compose: dict[str, Any]) -> None:
    env = {k: v for k, v in env_example().items() if k in ("NEXUS_BIND", "NEXUS_API_PORT", "GRAFANA_PORT")}
    for defaults in ({}, env):  # without .env (the defaults in the file) and with the example's values
        published = {}
        for name, svc in compose["services"].items():
            for port in svc.get("ports", []):
                host_ip, _host_port, container = interpolate(port, defaults).split(":")
                published[name] = (host_ip, container)
        assert published == {"nexus": ("127.0.0.1", "8080"), "grafana": ("127.0.0.1", "3000")}
    assert env["NEXUS_BIND"] == "127.0.0.1"
    for name, svc in compose["services"].items():
        assert "expose" not in svc and svc.get("network_mode") != "host", name


def test_health_checks(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        if name in ONE_SHOT:
            assert svc["restart"] == "no", name
            continue
        test = svc["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
    deps = compose["services"]["nexus"]["depends_on"]
    assert deps == {
        "timescaledb": {"condition": "service_healthy"},
        "broker": {"condition": "service_healthy"},
    }


def test_named_volumes_for_database_spool_and_recovery(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])

    def mounts(service: str) -> dict[str, str]:
        out = {}
        for v in compose["services"][service].get("volumes", []):
            source, target = v.split(":")[:2]
            out[target] = source
        return out

    assert mounts("timescaledb")["/var/lib/postgresql/data"] == "pgdata"
    assert mounts("nexus") == {
        "/var/lib/nexus/flows": "nexus-recovery",
        "/var/lib/nexus/spool": "nexus-spool",
    }
    for svc in compose["services"].values():
        for v in svc.get("volumes", []):
            source = v.split(":")[0]
            assert source.startswith(".") or source in declared, v


def test_secrets_come_from_env_and_are_documented(compose: dict[str, Any]) -> None:
    text = (COMPOSE / "docker-compose.yml").read_text() + (COMPOSE / "docker-compose.emqx.yml").read_text()
    used = {m.group(1) for m in _VAR.finditer(text)}
    assert used <= set(env_example()), f"not in .env.example: {used - set(env_example())}"
    for name, svc in compose["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if re.search(r"PASSWORD|KEY|COOKIE|_URL", key):
                assert "${" in str(value), f"{name}.{key} is not taken from .env"
    # every secret of the example is empty: nobody runs with a published default password
    for key, value in env_example().items():
        if re.search(r"PASSWORD|KEY|COOKIE", key):
            assert value == "", key
    with pytest.raises(ValueError, match="NEXUS_DB_PASSWORD"):
        interpolate(compose["services"]["timescaledb"]["environment"]["POSTGRES_PASSWORD"], {})


def test_every_referenced_file_exists() -> None:
    for name in ("docker-compose.yml", "docker-compose.emqx.yml"):
        doc = load(name)
        for svc in doc["services"].values():
            build = svc.get("build")
            if build:
                context = (COMPOSE / build["context"]).resolve()
                assert context == REPO and (context / build["dockerfile"]).is_file()
            for v in svc.get("volumes", []):
                source = v.split(":")[0]
                if source.startswith("."):
                    assert (COMPOSE / source).exists(), f"{name}: {v}"
    for path in ("../broker/mosquitto.conf", "../broker/mosquitto.acl", "../broker/emqx/acl.conf"):
        assert (COMPOSE / path).is_file(), path


def test_broker_files_require_auth() -> None:
    conf = (COMPOSE / "../broker/mosquitto.conf").read_text()
    assert re.search(r"^allow_anonymous false$", conf, re.M)
    assert re.search(r"^password_file /mosquitto/config/passwd$", conf, re.M)  # where broker-init writes it
    assert re.search(r"^acl_file /mosquitto/config/mosquitto.acl$", conf, re.M)


def test_emqx_override_replaces_the_broker() -> None:
    emqx = load("docker-compose.emqx.yml")["services"]
    assert emqx["broker"]["image"].startswith("emqx/emqx:5.8.")
    assert "../broker/emqx/acl.conf:/opt/emqx/etc/acl/acl.conf:ro" in emqx["broker"]["volumes"]
    assert emqx["broker"]["environment"]["EMQX_AUTHORIZATION__NO_MATCH"] == "deny"
    assert "ports" not in emqx["broker"]


def test_image_runs_as_a_non_root_user_and_ignores_local_state() -> None:
    dockerfile = (COMPOSE / "Dockerfile").read_text()
    final = dockerfile.split("\nFROM ")[-1]
    users = re.findall(r"^USER (\S+)", final, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".nexus", "**/.env"} <= ignored


def test_old_unsafe_files_are_gone() -> None:
    assert not (REPO / "deploy" / "docker-compose.yml").exists()
    assert not (REPO / "deploy" / "mosquitto").exists()


@pytest.mark.integration
@pytest.mark.skipif(
    not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists())
    or not shutil.which("mosquitto_passwd"),
    reason="mosquitto and mosquitto_passwd (Debian's mosquitto) are needed",
)
def test_broker_init_makes_a_password_file_the_broker_accepts() -> None:
    """``broker-init``'s script, run for real with ``mosquitto_passwd``, and a real mosquitto on the repo's
    ``mosquitto.conf`` and ACLs: the users from ``.env`` get in, a wrong password and anonymous do not."""
    import subprocess
    import tempfile

    from nexus.embedded import free_port, port_accepts
    from tests.conftest import wait_for

    compose = load("docker-compose.yml")
    script = compose["services"]["broker-init"]["command"][2]
    folder = Path(tempfile.mkdtemp(prefix="nexus-compose-broker-"))  # not under pytest's 0700 basetemp
    folder.chmod(0o755)
    (folder / "data").mkdir()
    if _has_user("mosquitto"):  # the broker drops to this user when started as root
        shutil.chown(folder / "data", "mosquitto")
    config = folder / "config"
    config.mkdir()
    script = script.replace("/mosquitto/config", str(config))
    if not _has_user("mosquitto"):
        script = "\n".join(line for line in script.splitlines() if not line.startswith("chown"))
    passwords = {u: f"pw-{u}-{os.getpid()}" for u in ("API", "FLOW", "READER")}
    env = {"PATH": os.environ["PATH"], **{f"NEXUS_MQTT_{u}_PASSWORD": p for u, p in passwords.items()}}
    subprocess.run(["sh", "-ec", interpolate(script, {})], env=env, check=True)
    port = free_port()
    conf = (COMPOSE / "../broker/mosquitto.conf").read_text()
    conf = conf.replace("/mosquitto/config/mosquitto.acl", str(COMPOSE / "../broker/mosquitto.acl"))
    conf = conf.replace("/mosquitto/config", str(config)).replace("/mosquitto/data/", f"{folder}/data/")
    conf = re.sub(r"^listener 1883$", f"listener {port} 127.0.0.1", conf, flags=re.M)
    (folder / "mosquitto.conf").write_text(conf)
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    log = (folder / "log").open("wb")
    proc = subprocess.Popen([exe, "-c", str(folder / "mosquitto.conf")], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(
            lambda: port_accepts("127.0.0.1", port) or proc.poll() is not None, timeout=15, what="mosquitto"
        )
        assert proc.poll() is None, (folder / "log").read_text()
        assert _connect(port, "nexus-reader", passwords["READER"]) == 0
        assert _connect(port, "nexus-flow", passwords["FLOW"]) == 0
        assert _connect(port, "nexus-api", passwords["API"]) == 0
        assert _connect(port, "nexus-reader", "wrong") != 0
        assert _connect(port, None, None) != 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _connect(port: int, user: str | None, password: str | None) -> int:
    """The CONNACK reason code for these credentials (0: accepted)."""
    import threading

    import paho.mqtt.client as mqtt

    result: list[int] = []
    done = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"compose-test-{os.getpid()}-{user}")
    if user is not None:
        client.username_pw_set(user, password)

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        result.append(int(reason.value))
        done.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert done.wait(10), "no CONNACK"
        return result[0]
    finally:
        client.disconnect()
        client.loop_stop()
