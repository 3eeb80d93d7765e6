"""Kubernetes manifests of one flow: a multi-pod Bytewax cluster as a StatefulSet.

What :func:`render_flow` returns is what the Kubernetes backend of the supervisor applies, and what
``deploy/k8s/base/flows/`` holds for the flows shipped with the manifests (``nexus k8s render``):

- a ConfigMap with the deployed version's spec (``spec.yaml``), named after the version, so a pod
  always reads the spec of the version its template names;
- a headless Service: stable DNS names ``{sts}-{i}.{service}.{namespace}.svc`` for the peers,
  published before the pods are ready (the peers must find each other to become ready at all);
- the StatefulSet: ``replicas`` = the flow's ``processes``; all pods start together (``Parallel``);
  each pod's Bytewax process id is its ordinal (the ``apps.kubernetes.io/pod-index`` label, through
  the downward API) and ``BYTEWAX_ADDRESSES`` lists every peer in ordinal order; a volume per pod
  (``volumeClaimTemplates``) for the recovery partitions and the sinks' spool, kept when the set is
  scaled down or deleted. The recovery partitions are created once, by pod 0's init container when
  its volume has none: all partitions live on pod 0's volume, so the set stays complete whatever
  the cluster size (Bytewax refuses to start on an incomplete set);
- a PodDisruptionBudget (one pod at a time: any lost pod restarts the whole cluster from recovery)
  and a NetworkPolicy letting only the flow's own pods reach its Bytewax port.

There is no HorizontalPodAutoscaler: a Bytewax cluster cannot change size while it runs. Scaling is
stop → resize → resume from recovery (see ``control.k8s_supervisor``).

>>> m = render_flow("line_1", 3, {"version": 1}, processes=2, config=FlowManifestConfig(namespace="nx"))
>>> [o["kind"] for o in m]
['ConfigMap', 'Service', 'StatefulSet', 'PodDisruptionBudget', 'NetworkPolicy']
>>> m[2]["metadata"]["name"], m[0]["metadata"]["name"]
('flow-line-1-683e72', 'flow-line-1-683e72-spec-v3')
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

BYTEWAX_PORT = 9999
MANAGED_BY = "nexus-supervisor"
FLOW_LABEL = "nexus.io/flow"
"""Label with the flow's resource name (flow ids may be longer than a label value)."""
FLOW_ID_ANNOTATION = "nexus.io/flow-id"
VERSION_ANNOTATION = "nexus.io/version"
PROCESSES_ANNOTATION = "nexus.io/processes"
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"
"""Set by the StatefulSet controller on every pod (Kubernetes 1.28+): the pod's ordinal."""
SPEC_DIR = "/etc/nexus/spec"
SPEC_FILE = "spec.yaml"
"""The key of the spec in its ConfigMap (YAML: what a ``configMapGenerator`` takes from Git as it is)."""
STATE_DIR = "/var/lib/nexus"
_DNS = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True)
class FlowManifestConfig:
    """How flow pods run: where, which image, which secrets, how much disk and CPU."""

    namespace: str = "nexus"
    image: str = "nexus-edge:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    cluster_domain: str = "cluster.local"
    secret: str = "nexus-flow"
    """Secret with ``database-url`` and ``mqtt-url`` (the broker user ``nexus-flow``)."""
    recovery_partitions: int = 16
    """Created once per flow; fixed forever: at least the most processes the flow will ever have."""
    snapshot_interval_s: int = 5
    storage_size: str = "2Gi"
    storage_class: str | None = None
    requests: Mapping[str, str] = field(default_factory=lambda: {"cpu": "250m", "memory": "512Mi"})
    limits: Mapping[str, str] = field(default_factory=lambda: {"memory": "2Gi"})
    managed_by: str = MANAGED_BY


def resource_name(flow_id: str) -> str:
    """A DNS-1123 name for the flow's resources (``flow-{id}``, short enough for pod names and labels).

    A hash of the exact id keeps ids that differ only in case or ``_``/``.`` apart.

    >>> resource_name("press-line")
    'flow-press-line'
    >>> resource_name("Press_Line") != resource_name("press-line")
    True
    """
    slug = _DNS.sub("-", flow_id.lower()).strip("-")[:36].strip("-")
    if slug == flow_id:
        return f"flow-{slug}"
    return f"flow-{slug}-{hashlib.sha1(flow_id.encode()).hexdigest()[:6]}"


def peer_addresses(name: str, processes: int, config: FlowManifestConfig) -> str:
    """``BYTEWAX_ADDRESSES``: every pod's stable name and Bytewax port, in ordinal order.

    >>> peer_addresses("flow-a", 2, FlowManifestConfig(namespace="nx"))
    'flow-a-0.flow-a.nx.svc.cluster.local:9999;flow-a-1.flow-a.nx.svc.cluster.local:9999'
    """
    return ";".join(
        f"{name}-{i}.{name}.{config.namespace}.svc.{config.cluster_domain}:{BYTEWAX_PORT}"
        for i in range(processes)
    )


def _labels(name: str, config: FlowManifestConfig) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "nexus-edge",
        "app.kubernetes.io/component": "flow",
        "app.kubernetes.io/managed-by": config.managed_by,
        FLOW_LABEL: name,
    }


def _meta(name: str, flow_id: str, config: FlowManifestConfig, **annotations: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": config.namespace,
        "labels": _labels(resource_name(flow_id), config),
        "annotations": {FLOW_ID_ANNOTATION: flow_id, **annotations},
    }


def _secret_env(name: str, secret: str, key: str, *, optional: bool = False) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": secret, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def flow_env(flow_id: str, version: int, processes: int, config: FlowManifestConfig) -> list[dict[str, Any]]:
    """The flow container's environment (the secrets by reference, never by value)."""
    name = resource_name(flow_id)
    env: list[dict[str, Any]] = [
        {"name": "NEXUS_SPEC", "value": f"{SPEC_DIR}/{SPEC_FILE}"},
        {"name": "NEXUS_FLOW_ID", "value": flow_id},
        {"name": "NEXUS_FLOW_VERSION", "value": str(version)},
        _secret_env("NEXUS_DATABASE_URL", config.secret, "database-url"),
        _secret_env("NEXUS_MQTT_URL", config.secret, "mqtt-url"),
        # verifies the API's signed write commands; without it the flow refuses every command
        _secret_env("NEXUS_COMMAND_KEY", config.secret, "command-key", optional=True),
        {"name": "NEXUS_SPOOL_DIR", "value": f"{STATE_DIR}/spool"},
        {"name": "NEXUS_LOG_FORMAT", "value": "json"},
        {"name": "BYTEWAX_RECOVERY_DIRECTORY", "value": f"{STATE_DIR}/recovery"},
        {"name": "BYTEWAX_SNAPSHOT_INTERVAL", "value": str(config.snapshot_interval_s)},
        {"name": "BYTEWAX_RECOVERY_BACKUP_INTERVAL", "value": "0"},
    ]
    if processes > 1:  # one process: no cluster (bytewax refuses a process id without addresses)
        env += [
            {
                "name": "BYTEWAX_PROCESS_ID",
                "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{POD_INDEX_LABEL}']"}},
            },
            {"name": "BYTEWAX_ADDRESSES", "value": peer_addresses(name, processes, config)},
        ]
    return env


_INIT_SCRIPT = (
    'mkdir -p {dir} {spool} && if [ "${{BYTEWAX_PROCESS_ID:-0}}" = 0 ] && '
    "! ls {dir}/part-*.sqlite3 >/dev/null 2>&1; then python -m bytewax.recovery {dir} {n}; fi"
)


def _pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def render_flow(
    flow_id: str,
    version: int,
    spec: Mapping[str, Any],
    *,
    processes: int,
    config: FlowManifestConfig,
    spec_configmap: str | None = None,
) -> list[dict[str, Any]]:
    """The flow's ConfigMap, headless Service, StatefulSet, PodDisruptionBudget and NetworkPolicy.

    ``spec_configmap`` names an existing ConfigMap with ``spec.yaml`` instead (Kustomize's
    ``configMapGenerator``); then no ConfigMap is rendered.
    """
    if processes < 1:
        raise ValueError(f"flow {flow_id}: processes must be >= 1, got {processes}")
    if processes > config.recovery_partitions:
        raise ValueError(
            f"flow {flow_id}: {processes} processes but {config.recovery_partitions} recovery partitions; "
            "partitions are fixed once created, so the cluster cannot be larger"
        )
    name = resource_name(flow_id)
    labels = _labels(name, config)
    annotations = {VERSION_ANNOTATION: str(version), PROCESSES_ANNOTATION: str(processes)}
    out: list[dict[str, Any]] = []
    cm_name = spec_configmap or f"{name}-spec-v{version}"
    if spec_configmap is None:
        out.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": _meta(cm_name, flow_id, config, **annotations),
                "data": {SPEC_FILE: yaml.safe_dump(dict(spec), sort_keys=False)},
            }
        )
    out.append(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(name, flow_id, config),
            "spec": {
                "clusterIP": "None",
                "publishNotReadyAddresses": True,
                "selector": labels,
                "ports": [{"name": "bytewax", "port": BYTEWAX_PORT, "targetPort": "bytewax"}],
            },
        }
    )
    recovery = f"{STATE_DIR}/recovery"
    state_mounts = [
        {"name": "state", "mountPath": recovery, "subPath": "recovery"},
        {"name": "state", "mountPath": f"{STATE_DIR}/spool", "subPath": "spool"},
    ]
    env = flow_env(flow_id, version, processes, config)
    claim: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": config.storage_size}},
    }
    if config.storage_class:
        claim["storageClassName"] = config.storage_class
    out.append(
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": _meta(name, flow_id, config, **annotations),
            "spec": {
                "serviceName": name,
                "replicas": processes,
                "podManagementPolicy": "Parallel",
                "updateStrategy": {"type": "RollingUpdate"},
                "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"},
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels, "annotations": annotations},
                    "spec": {
                        "automountServiceAccountToken": False,
                        "securityContext": _pod_security(),
                        "terminationGracePeriodSeconds": 60,
                        "initContainers": [
                            {
                                "name": "recovery-partitions",
                                "image": config.image,
                                "imagePullPolicy": config.image_pull_policy,
                                "command": [
                                    "sh",
                                    "-c",
                                    _INIT_SCRIPT.format(
                                        dir=recovery, n=config.recovery_partitions, spool=f"{STATE_DIR}/spool"
                                    ),
                                ],
                                "env": [e for e in env if e["name"] == "BYTEWAX_PROCESS_ID"],
                                "volumeMounts": [{"name": "state", "mountPath": STATE_DIR}],
                                "securityContext": _container_security(),
                            }
                        ],
                        "containers": [
                            {
                                "name": "flow",
                                "image": config.image,
                                "imagePullPolicy": config.image_pull_policy,
                                # exec'd Python as PID 1: SIGTERM reaches the flow, which drains
                                "command": ["python", "-m", "bytewax.run", "dataflows.telemetry:flow"],
                                "env": env,
                                "ports": [{"name": "bytewax", "containerPort": BYTEWAX_PORT}],
                                "resources": {
                                    "requests": dict(config.requests),
                                    "limits": dict(config.limits),
                                },
                                "volumeMounts": [
                                    {"name": "spec", "mountPath": SPEC_DIR, "readOnly": True},
                                    {"name": "tmp", "mountPath": "/tmp"},
                                    *state_mounts,
                                ],
                                "securityContext": _container_security(),
                            }
                        ],
                        "volumes": [
                            {"name": "spec", "configMap": {"name": cm_name}},
                            {"name": "tmp", "emptyDir": {}},
                        ],
                    },
                },
                "volumeClaimTemplates": [{"metadata": {"name": "state"}, "spec": claim}],
            },
        }
    )
    out.append(
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": _meta(name, flow_id, config),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels}},
        }
    )
    out.append(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _meta(f"{name}-peers", flow_id, config),
            "spec": {
                "podSelector": {"matchLabels": labels},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {
                        "from": [{"podSelector": {"matchLabels": labels}}],
                        "ports": [{"protocol": "TCP", "port": BYTEWAX_PORT}],
                    }
                ],
            },
        }
    )
    return out
