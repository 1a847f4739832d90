"""Shared helpers of the chart tests: render the chart with the real Helm SDK, pick objects out of
the result, and order them the way `helm install` applies them."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "charts" / "moeplane"
VALUES_DIR = Path(__file__).resolve().parent / "values"
RELEASE = "moeplane"
NAMESPACE = "moeplane"

# The chart's minimum (Chart.yaml kubeVersion) and the newest kubernetes-validate knows.
KUBE_VERSIONS = ("1.29.0", "1.37.0")

# Helm's install order (pkg/release/util/kind_sorter.go): what `helm install` creates first.
INSTALL_ORDER = (
    "PriorityClass",
    "Namespace",
    "NetworkPolicy",
    "ResourceQuota",
    "LimitRange",
    "PodSecurityPolicy",
    "PodDisruptionBudget",
    "ServiceAccount",
    "Secret",
    "SecretList",
    "ConfigMap",
    "StorageClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleList",
    "ClusterRoleBinding",
    "ClusterRoleBindingList",
    "Role",
    "RoleList",
    "RoleBinding",
    "RoleBindingList",
    "Service",
    "DaemonSet",
    "Pod",
    "ReplicationController",
    "ReplicaSet",
    "Deployment",
    "HorizontalPodAutoscaler",
    "StatefulSet",
    "Job",
    "CronJob",
    "IngressClass",
    "Ingress",
    "APIService",
)


@dataclass(frozen=True)
class Manifest:
    """One rendered object and the template it came from."""

    template: str
    obj: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.obj["kind"])

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])

    @property
    def namespace(self) -> str | None:
        return self.obj["metadata"].get("namespace")

    @property
    def hook(self) -> str | None:
        return (self.obj["metadata"].get("annotations") or {}).get("helm.sh/hook")


@cache
def chart() -> helm.Chart:
    return helm.Chart.load(CHART_DIR)


def values_file(name: str) -> dict[str, Any]:
    return yaml.safe_load((VALUES_DIR / name).read_text()) or {}


def values_files() -> list[str]:
    return sorted(p.name for p in VALUES_DIR.glob("*.yaml"))


def render(values: dict[str, Any] | None = None, namespace: str = NAMESPACE) -> list[Manifest]:
    """Every object the chart renders (hooks included, NOTES.txt excluded), in template order."""
    out = []
    rendered = chart().render(values or {}, name=RELEASE, namespace=namespace, is_install=True)
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                out.append(Manifest(template.removeprefix(f"{chart().name}/"), doc))
    return out


def notes(values: dict[str, Any] | None = None) -> str:
    rendered = chart().render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return rendered[f"{chart().name}/templates/NOTES.txt"]


def pick(manifests: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [m for m in manifests if m.kind == kind and (name is None or m.name == name)]


def one(manifests: list[Manifest], kind: str, name: str) -> dict[str, Any]:
    found = pick(manifests, kind, name)
    assert len(found) == 1, (
        f"expected one {kind}/{name}, found {len(found)}: {[m.name for m in pick(manifests, kind)]}"
    )
    return found[0].obj


def install_order(manifests: list[Manifest]) -> list[Manifest]:
    """Non-hook objects in the order `helm install` applies them (unknown kinds last)."""
    rank = {kind: i for i, kind in enumerate(INSTALL_ORDER)}
    plain = [m for m in manifests if m.hook is None]
    return sorted(plain, key=lambda m: rank.get(m.kind, len(rank)))


def pod_specs(manifests: list[Manifest]) -> list[tuple[str, dict[str, Any]]]:
    """(kind/name, pod spec) of every workload and bare Pod."""
    out = []
    for m in manifests:
        if m.kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            out.append((f"{m.kind}/{m.name}", m.obj["spec"]["template"]["spec"]))
        elif m.kind == "Pod":
            out.append((f"{m.kind}/{m.name}", m.obj["spec"]))
    return out


Call = tuple[str, str, str]  # (verb, API group, resource[/subresource]), as RBAC names a request


def expand(rules: list[dict[str, Any]]) -> set[Call]:
    """The calls a list of PolicyRules allows."""
    return {
        (verb, group, resource)
        for rule in rules
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    }


def grants(manifests: list[Manifest], component: str) -> set[Call]:
    """Everything the component's ServiceAccount (moeplane-<component>) may do, through any
    binding the chart renders (a RoleBinding's grants hold in its namespace only)."""
    account = {"kind": "ServiceAccount", "name": f"moeplane-{component}", "namespace": NAMESPACE}
    cluster_roles = {m.name: m.obj for m in pick(manifests, "ClusterRole")}
    roles = {(m.namespace, m.name): m.obj for m in pick(manifests, "Role")}
    out: set[Call] = set()
    for binding in pick(manifests, "ClusterRoleBinding") + pick(manifests, "RoleBinding"):
        if account in binding.obj["subjects"]:
            ref = binding.obj["roleRef"]
            if ref["kind"] == "ClusterRole":
                role = cluster_roles[ref["name"]]
            else:
                role = roles[(binding.namespace, ref["name"])]
            out |= expand(role["rules"])
    return out


def to_yaml(manifests: list[Manifest]) -> str:
    return "---\n".join(yaml.safe_dump(m.obj, sort_keys=False) for m in manifests)
