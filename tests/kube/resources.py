"""Resource definitions: the built-in kinds the emulator serves, and CRDs turned into resources."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.kube.errors import invalid
from tests.kube.selectors import get_path


@dataclass(frozen=True)
class ScalePaths:
    """Where the `/scale` subresource reads and writes the main object (JSON paths like `.spec.replicas`)."""

    spec_replicas: str
    status_replicas: str
    label_selector: str | None = None


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    type: str
    json_path: str
    description: str = ""
    priority: int = 0
    format: str = ""


ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class ResourceDef:
    """One served resource at one version. Objects are stored per `(group, plural)`, across versions."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    status_subresource: bool = False
    scale: ScalePaths | None = None
    schema: Mapping[str, Any] | None = field(default=None, compare=False, hash=False)
    printer_columns: tuple[PrinterColumn, ...] = ()
    storage: bool = True

    @property
    def storage_key(self) -> tuple[str, str]:
        return (self.group, self.plural)

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def api_version(self) -> str:
        return self.group_version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def subresources(self) -> tuple[str, ...]:
        return (("status",) if self.status_subresource else ()) + (("scale",) if self.scale else ())

    @property
    def singular_name(self) -> str:
        return self.singular or self.kind.lower()

    def describe(self) -> str:
        """The `plural.group` form Kubernetes uses in messages (`configmaps`, `moepools.moeplane.io`)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


def _builtin(
    group: str,
    version: str,
    plural: str,
    kind: str,
    namespaced: bool = True,
    short_names: tuple[str, ...] = (),
    status: bool = False,
    scale: bool = False,
) -> ResourceDef:
    return ResourceDef(
        group=group,
        version=version,
        plural=plural,
        kind=kind,
        namespaced=namespaced,
        short_names=short_names,
        status_subresource=status,
        scale=ScalePaths(".spec.replicas", ".status.replicas", ".status.selector") if scale else None,
    )


# The built-in kinds the operator, the planner and the Helm chart touch. They carry no schema:
# the emulator accepts any body for them (a real server would check their Go types).
BUILTINS: tuple[ResourceDef, ...] = (
    _builtin("", "v1", "namespaces", "Namespace", namespaced=False, short_names=("ns",), status=True),
    _builtin("", "v1", "configmaps", "ConfigMap", short_names=("cm",)),
    _builtin("", "v1", "secrets", "Secret"),
    _builtin("", "v1", "services", "Service", short_names=("svc",), status=True),
    _builtin("", "v1", "serviceaccounts", "ServiceAccount", short_names=("sa",)),
    _builtin("", "v1", "pods", "Pod", short_names=("po",), status=True),
    _builtin("", "v1", "events", "Event", short_names=("ev",)),
    _builtin("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", short_names=("pvc",), status=True),
    _builtin("apps", "v1", "deployments", "Deployment", short_names=("deploy",), status=True, scale=True),
    _builtin("apps", "v1", "statefulsets", "StatefulSet", short_names=("sts",), status=True, scale=True),
    _builtin("batch", "v1", "jobs", "Job", status=True),
    _builtin("events.k8s.io", "v1", "events", "Event", short_names=("ev",)),
    _builtin("coordination.k8s.io", "v1", "leases", "Lease"),
    _builtin(
        "policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", short_names=("pdb",), status=True
    ),
    _builtin(
        "autoscaling",
        "v2",
        "horizontalpodautoscalers",
        "HorizontalPodAutoscaler",
        short_names=("hpa",),
        status=True,
    ),
    _builtin("networking.k8s.io", "v1", "ingresses", "Ingress", short_names=("ing",), status=True),
    _builtin("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", short_names=("netpol",)),
    _builtin("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    _builtin("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    _builtin("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", namespaced=False),
    _builtin(
        "rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", namespaced=False
    ),
    _builtin(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        namespaced=False,
        short_names=("crd", "crds"),
        status=True,
    ),
)

CRD_RESOURCE = BUILTINS[-1]


def _column(raw: Mapping[str, Any]) -> PrinterColumn:
    return PrinterColumn(
        name=str(raw["name"]),
        type=str(raw.get("type", "string")),
        json_path=str(raw["jsonPath"]),
        description=str(raw.get("description", "")),
        priority=int(raw.get("priority", 0)),
        format=str(raw.get("format", "")),
    )


def resources_from_crd(crd: Mapping[str, Any]) -> list[ResourceDef]:
    """The served versions of an `apiextensions.k8s.io/v1` CustomResourceDefinition.

    Raises `ApiError` (422) naming the field when the CRD itself is malformed.
    """
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group, scope = spec.get("group"), spec.get("scope")
    problems = []
    if not group:
        problems.append("spec.group: Required value")
    if not names.get("plural") or not names.get("kind"):
        problems.append("spec.names: Required value: plural and kind are required")
    if scope not in ("Namespaced", "Cluster"):
        problems.append(
            f'spec.scope: Unsupported value: {scope!r}: supported values: "Cluster", "Namespaced"'
        )
    versions = spec.get("versions") or []
    if not versions or sum(1 for v in versions if v.get("storage")) != 1:
        problems.append(
            "spec.versions: Invalid value: must have exactly one version marked as storage version"
        )
    expected_name = f"{names.get('plural')}.{group}"
    crd_name = (crd.get("metadata") or {}).get("name")
    if crd_name != expected_name:
        problems.append(
            f'metadata.name: Invalid value: {crd_name!r}: must be spec.names.plural+"."+spec.group'
        )
    if problems:
        raise invalid("CustomResourceDefinition", str(crd_name), problems, group="apiextensions.k8s.io")

    result = []
    for version in versions:
        if not version.get("served", True):
            continue
        sub = version.get("subresources") or {}
        scale_raw = sub.get("scale")
        scale = (
            ScalePaths(
                spec_replicas=scale_raw["specReplicasPath"],
                status_replicas=scale_raw["statusReplicasPath"],
                label_selector=scale_raw.get("labelSelectorPath"),
            )
            if scale_raw
            else None
        )
        result.append(
            ResourceDef(
                group=group,
                version=version["name"],
                plural=names["plural"],
                kind=names["kind"],
                namespaced=scope == "Namespaced",
                singular=names.get("singular", ""),
                short_names=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                status_subresource="status" in sub,
                scale=scale,
                schema=(version.get("schema") or {}).get("openAPIV3Schema"),
                printer_columns=tuple(_column(c) for c in version.get("additionalPrinterColumns") or ()),
                storage=bool(version.get("storage")),
            )
        )
    return result


def crd_manifest(resources: Iterable[ResourceDef]) -> dict[str, Any]:
    """A CustomResourceDefinition for resources given in Python (KubeRay's RayCluster in tests)."""
    defs = list(resources)
    first = defs[0]
    versions = []
    for d in defs:
        sub: dict[str, Any] = {}
        if d.status_subresource:
            sub["status"] = {}
        if d.scale:
            sub["scale"] = {
                "specReplicasPath": d.scale.spec_replicas,
                "statusReplicasPath": d.scale.status_replicas,
            }
        versions.append(
            {
                "name": d.version,
                "served": True,
                "storage": d.storage,
                "subresources": sub,
                "schema": {
                    "openAPIV3Schema": dict(
                        d.schema or {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                    )
                },
            }
        )
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{first.plural}.{first.group}"},
        "spec": {
            "group": first.group,
            "scope": "Namespaced" if first.namespaced else "Cluster",
            "names": {
                "plural": first.plural,
                "kind": first.kind,
                "singular": first.singular_name,
                "shortNames": list(first.short_names),
                "listKind": first.list_kind,
            },
            "versions": versions,
        },
    }


def scale_view(obj: Mapping[str, Any], paths: ScalePaths) -> dict[str, Any]:
    """The `autoscaling/v1` Scale a `/scale` subresource shows for a stored object."""
    meta = obj["metadata"]
    selector = get_path(obj, paths.label_selector) if paths.label_selector else None
    status: dict[str, Any] = {"replicas": int(get_path(obj, paths.status_replicas) or 0)}
    if selector:
        status["selector"] = selector
    return {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            k: meta[k]
            for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            if k in meta
        },
        "spec": {"replicas": int(get_path(obj, paths.spec_replicas) or 0)},
        "status": status,
    }
