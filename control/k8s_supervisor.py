"""The supervisor's Kubernetes backend: each flow a StatefulSet (``control.k8s``) instead of local processes.

Same reconciler, same leadership (the PostgreSQL advisory lock), same wake-ups and status as the
local :class:`~control.supervisor.Supervisor`; only the pass differs. Each pass compares the desired
flows with the StatefulSets it manages (label ``app.kubernetes.io/managed-by: nexus-supervisor``;
anything else in the namespace is left alone) and takes one step towards the wanted state:

- not there → apply the flow's manifests (ConfigMap, headless Service, StatefulSet, PDB, policy);
- a new version the planner says is hot → publish the device sections on ``$nexus/config/...`` (as
  the local backend does) and record the version on the StatefulSet, without touching its pods;
- a new size or a redeploy → **stop, resize, resume**: scale the StatefulSet to 0 (every pod gets
  SIGTERM and drains, final snapshot), wait until no pod is left, then apply the manifests with the
  new size and version; the pods resume from the recovery partitions on pod 0's volume. A Bytewax
  cluster cannot change size while it runs, so there is no HPA and no rolling resize;
- stopped → scale to 0 (volumes, hence recovery state and spool, are kept);
- no longer in the store → delete its StatefulSet, Service, PDB, policy and spec ConfigMaps; the
  volumes stay (``persistentVolumeClaimRetentionPolicy: Retain``) until an operator removes them.

The cluster is reached through :class:`Cluster` (get / apply / scale / delete / list);
:class:`KubernetesCluster` implements it with the ``kubernetes`` client (server-side apply, field
manager ``nexus-supervisor``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

from control.k8s import (
    FLOW_LABEL,
    MANAGED_BY,
    PROCESSES_ANNOTATION,
    SPEC_FILE,
    VERSION_ANNOTATION,
    FlowManifestConfig,
    render_flow,
    resource_name,
)
from control.supervisor import Supervisor, _Flow
from control.types import DesiredFlow, DesiredStateSource
from core.settings import Settings

log = logging.getLogger(__name__)

FLOW_KINDS = ("StatefulSet", "Service", "PodDisruptionBudget", "NetworkPolicy", "ConfigMap")
MANAGED_SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY}"


class Cluster(Protocol):
    """The few Kubernetes operations the backend needs, in one namespace."""

    def get(self, kind: str, name: str) -> dict[str, Any] | None: ...

    def apply(self, obj: Mapping[str, Any]) -> None: ...

    def scale(self, name: str, replicas: int) -> None:
        """Set a StatefulSet's ``spec.replicas``."""

    def annotate(self, kind: str, name: str, annotations: Mapping[str, str]) -> None: ...

    def delete(self, kind: str, name: str) -> None: ...

    def list(self, kind: str, selector: str) -> list[dict[str, Any]]: ...


def _annotation(obj: Mapping[str, Any], key: str) -> str | None:
    value = (obj.get("metadata") or {}).get("annotations", {}).get(key)
    return None if value is None else str(value)


class KubernetesSupervisor(Supervisor):
    """Runs each desired flow as a StatefulSet through ``cluster``; see the module docstring."""

    def __init__(
        self,
        source: DesiredStateSource,
        settings: Settings | None = None,
        *,
        cluster: Cluster,
        config: FlowManifestConfig,
        data_dir: str,
        mqtt_url: str,
        database_url: str | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            source, settings, data_dir=data_dir, mqtt_url=mqtt_url, database_url=database_url, **kwargs
        )
        self.cluster = cluster
        self.config = config

    def stop(self, *, drain: bool = True) -> None:
        """Stop reconciling; the StatefulSets keep running (they belong to the cluster, not to this pod)."""
        super().stop(drain=False)

    def reconcile(self) -> None:
        with self._pass_lock:
            try:
                desired = {d.flow_id: d for d in self.source.desired_flows()}
            except Exception as exc:
                log.warning(
                    "k8s supervisor: cannot read the desired state (%s); keeping flows as they are", exc
                )
                return
            live = {
                _annotation(s, "nexus.io/flow-id") or s["metadata"]["name"]: s
                for s in self.cluster.list("StatefulSet", MANAGED_SELECTOR)
            }
            for flow_id, want in desired.items():
                flow = self._flows.setdefault(flow_id, _Flow(flow_id))
                try:
                    self._step(flow, want, live.get(flow_id))
                except Exception as exc:  # one flow's API error must not stop the others
                    log.error("k8s supervisor: flow %s: %s", flow_id, exc)
                    flow.last_error = (str(exc),)
                    flow.set_state("failed")
                self._publish(flow)
            for flow_id in [f for f in live if f not in desired]:
                self._remove(flow_id)
                self._flows.pop(flow_id, None)
                with self._status_lock:
                    self._status.pop(flow_id, None)

    def _step(self, flow: _Flow, want: DesiredFlow, sts: dict[str, Any] | None) -> None:
        """One step of one flow towards ``want`` (level-triggered: the next pass takes the next step)."""
        running = want.desired_state == "running" and want.version is not None and want.spec is not None
        processes = max(1, want.processes)
        pods = int((sts or {}).get("status", {}).get("replicas") or 0)
        replicas = int((sts or {}).get("spec", {}).get("replicas") or 0)
        name = resource_name(flow.flow_id)
        if not running:
            if replicas:
                self.cluster.scale(name, 0)
            flow.set_state("stopping" if pods else "stopped")
            return
        assert want.version is not None and want.spec is not None
        if sts is None:
            self._apply(flow, want, processes)
            return
        live_version = _annotation(sts, VERSION_ANNOTATION)
        live_processes = _annotation(sts, PROCESSES_ANNOTATION)
        flow.version = int(live_version) if live_version and live_version.isdigit() else None
        same_size = live_processes == str(processes)
        if same_size and flow.version == want.version:
            if replicas == 0:  # stopped before, wanted again: resume
                self._apply(flow, want, processes)
                return
            ready = int(sts.get("status", {}).get("readyReplicas") or 0)
            flow.set_state("running" if ready >= processes else "starting")
            return
        if same_size and replicas and flow.version is not None and self._try_hot(flow, want, sts):
            return
        # stop -> resize -> resume: scale to zero, wait for the pods to be gone, apply the new size
        if replicas:
            log.info(
                "k8s supervisor: flow %s: stopping (v%s x%s -> v%s x%d)",
                flow.flow_id,
                live_version,
                live_processes,
                want.version,
                processes,
            )
            self.cluster.scale(name, 0)
            flow.set_state("stopping")
        elif pods:
            flow.set_state("stopping")  # pods still draining
        else:
            self._apply(flow, want, processes)

    def _try_hot(self, flow: _Flow, want: DesiredFlow, sts: Mapping[str, Any]) -> bool:
        flow.spec = self._read_spec_of(sts)
        plan = self._plan(flow, want)
        if plan is None or plan.kind not in ("hot", "noop"):
            return False
        assert want.version is not None
        if plan.kind == "hot":
            try:
                self._publish_hot(flow.flow_id, want.version, plan.device_patches)
            except Exception as exc:
                log.warning("k8s supervisor: flow %s: hot reload failed (%s); redeploying", flow.flow_id, exc)
                return False
        # the version is recorded on the set only: its pods keep running (and reread the retained config)
        self.cluster.annotate(
            "StatefulSet", resource_name(flow.flow_id), {VERSION_ANNOTATION: str(want.version)}
        )
        flow.version, flow.spec = want.version, want.spec
        return True

    def _read_spec_of(self, sts: Mapping[str, Any]) -> Mapping[str, Any] | None:
        import yaml

        for volume in sts.get("spec", {}).get("template", {}).get("spec", {}).get("volumes", []):
            if volume.get("name") == "spec":
                cm = self.cluster.get("ConfigMap", volume["configMap"]["name"])
                if cm is not None:
                    data = yaml.safe_load(cm.get("data", {}).get(SPEC_FILE, "null"))
                    return data if isinstance(data, dict) else None
        return None

    def _apply(self, flow: _Flow, want: DesiredFlow, processes: int) -> None:
        assert want.version is not None and want.spec is not None
        objects = render_flow(flow.flow_id, want.version, want.spec, processes=processes, config=self.config)
        for obj in objects:
            self.cluster.apply(obj)
        # the earlier versions' spec ConfigMaps: no pod refers to them any more (the set was at zero)
        current = {o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"}
        selector = f"{MANAGED_SELECTOR},{FLOW_LABEL}={resource_name(flow.flow_id)}"
        for cm in self.cluster.list("ConfigMap", selector):
            if cm["metadata"]["name"] not in current:
                self.cluster.delete("ConfigMap", cm["metadata"]["name"])
        flow.version, flow.spec, flow.processes = want.version, want.spec, processes
        flow.set_state("starting")
        log.info("k8s supervisor: flow %s v%d applied with %d pod(s)", flow.flow_id, want.version, processes)

    def _remove(self, flow_id: str) -> None:
        name = resource_name(flow_id)
        for kind in FLOW_KINDS:
            for obj in self.cluster.list(kind, f"{MANAGED_SELECTOR},{FLOW_LABEL}={name}"):
                self.cluster.delete(kind, obj["metadata"]["name"])
        log.info("k8s supervisor: flow %s removed (its volumes are kept)", flow_id)


_API = {
    "StatefulSet": ("apps/v1", "StatefulSet"),
    "Service": ("v1", "Service"),
    "ConfigMap": ("v1", "ConfigMap"),
    "PodDisruptionBudget": ("policy/v1", "PodDisruptionBudget"),
    "NetworkPolicy": ("networking.k8s.io/v1", "NetworkPolicy"),
}


class KubernetesCluster:
    """:class:`Cluster` through the ``kubernetes`` client: in-cluster config (the API pod's service
    account, see ``deploy/k8s/base/api/rbac.yaml``) or the local kubeconfig."""

    def __init__(self, namespace: str, *, field_manager: str = MANAGED_BY) -> None:
        from kubernetes import client, config, dynamic

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        self.namespace = namespace
        self.field_manager = field_manager
        self._dyn = dynamic.DynamicClient(client.ApiClient())

    def _res(self, kind: str) -> Any:
        api_version, k = _API[kind]
        return self._dyn.resources.get(api_version=api_version, kind=k)

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        from kubernetes.dynamic.exceptions import NotFoundError

        try:
            return dict(self._res(kind).get(name=name, namespace=self.namespace).to_dict())
        except NotFoundError:
            return None

    def apply(self, obj: Mapping[str, Any]) -> None:
        self._res(str(obj["kind"])).server_side_apply(
            body=dict(obj), namespace=self.namespace, field_manager=self.field_manager, force_conflicts=True
        )

    def scale(self, name: str, replicas: int) -> None:
        self._res("StatefulSet").patch(
            name=name,
            namespace=self.namespace,
            body={"spec": {"replicas": replicas}},
            content_type="application/merge-patch+json",
        )

    def annotate(self, kind: str, name: str, annotations: Mapping[str, str]) -> None:
        self._res(kind).patch(
            name=name,
            namespace=self.namespace,
            body={"metadata": {"annotations": dict(annotations)}},
            content_type="application/merge-patch+json",
        )

    def delete(self, kind: str, name: str) -> None:
        self._res(kind).delete(name=name, namespace=self.namespace)

    def list(self, kind: str, selector: str) -> list[dict[str, Any]]:
        items = self._res(kind).get(namespace=self.namespace, label_selector=selector).to_dict()
        return list(items.get("items") or [])
