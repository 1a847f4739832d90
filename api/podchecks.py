"""Checks of the pod-template, storage and fabric fields of a MoEDeployment, at validation time.

What Kubernetes would refuse only when the operator (or KubeRay) creates a pod, or what would
silently break a pod the operator makes, is refused here with the field's path: names that are
not Kubernetes names, env vars and mounts that collide with the operator's, volumes without a
source, memory requests below the worker's /dev/shm, locations that are not one of the accepted
forms, a Mooncake rdma transport without an RDMA fabric.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from moeplane.api import podcontract as pc
from moeplane.api.enums import KvTransferBackend, Role
from moeplane.api.errors import Problem
from moeplane.api.hardware import HardwarePreset
from moeplane.api.podtemplate import MooncakeProtocol, PodOverrides, PoolPodOverrides, RdmaSpec
from moeplane.api.spec import MoEDeploymentSpec

BYTES_TOKENIZER = "bytes"
GPU_SHM = "64Gi"
CPU_SHM = "2Gi"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_NAME_PART = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?$")
_SUFFIX: dict[str, Decimal | int] = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": 1,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}  # fmt: skip
# Every volume source of a core/v1 Volume (Kubernetes 1.33).
VOLUME_SOURCES = frozenset(
    {
        "awsElasticBlockStore", "azureDisk", "azureFile", "cephfs", "cinder", "configMap", "csi",
        "downwardAPI", "emptyDir", "ephemeral", "fc", "flexVolume", "flocker", "gcePersistentDisk",
        "gitRepo", "glusterfs", "hostPath", "image", "iscsi", "nfs", "persistentVolumeClaim",
        "photonPersistentDisk", "portworxVolume", "projected", "quobyte", "rbd", "scaleIO", "secret",
        "storageos", "vsphereVolume",
    }
)  # fmt: skip
ENV_SOURCES = frozenset({"secretKeyRef", "configMapKeyRef", "fieldRef", "resourceFieldRef", "fileKeyRef"})


class QuantityError(ValueError):
    pass


def parse_quantity(value: object) -> Decimal:
    """A Kubernetes resource quantity ("64Gi", "500m", 2) as a number; QuantityError otherwise."""
    text = str(value).strip()
    match = _QUANTITY.match(text)
    if not match or isinstance(value, bool):
        raise QuantityError(f"{value!r} is not a Kubernetes quantity (e.g. 4, 500m, 64Gi)")
    number, suffix = Decimal(match.group(1)), match.group(2) or ""
    try:
        if suffix[:1] in ("e", "E"):
            return number * Decimal(10) ** int(suffix[1:])
        return number * Decimal(_SUFFIX[suffix])  # an int or a Decimal already
    except (InvalidOperation, KeyError) as exc:
        raise QuantityError(f"{value!r} is not a Kubernetes quantity") from exc


def is_qualified_name(key: str) -> bool:
    """A Kubernetes label/annotation key: [DNS-subdomain prefix '/'] name of <= 63 characters."""
    prefix, _, name = key.rpartition("/")
    return bool(_NAME_PART.match(name)) and (not prefix or bool(_DNS_SUBDOMAIN.match(prefix)))


def shm_size(pod: PoolPodOverrides | None, gpu: HardwarePreset) -> str:
    """The /dev/shm size of a pool's worker pods."""
    if pod is not None and pod.shm_size:
        return pod.shm_size
    return CPU_SHM if gpu is HardwarePreset.CPU else GPU_SHM


# ---- the whole spec -------------------------------------------------------------------------------
def pod_problems(spec: MoEDeploymentSpec) -> list[Problem]:
    """Every problem of the pod-template, storage and fabric fields of `spec`, in field order."""
    problems = _hf_cache_problems(spec)
    problems += _hardware_problems(spec)
    rdma = spec.hardware.rdma
    for role in Role:
        pool = spec.pool(role)
        path = f"spec.{role.value}"
        if pool.topology_key is not None and not is_qualified_name(pool.topology_key):
            problems.append(Problem(f"{path}.topologyKey", f"{pool.topology_key!r} is not a node label key"))
        shm = shm_size(pool.pod, spec.hardware.gpu)
        problems += _resource_problems(f"{path}.resources", pool.resources, shm_size=shm)
        if pool.pod is not None:
            problems += _pool_pod_problems(f"{path}.pod", pool.pod, rdma)
    problems += _resource_problems("spec.frontend.resources", spec.frontend.resources)
    if spec.frontend.pod is not None:
        problems += _overrides_problems("spec.frontend.pod", spec.frontend.pod, pc.reserved_env(None), ())
    problems += _mooncake_problems(spec)
    return problems


def _hf_cache_problems(spec: MoEDeploymentSpec) -> list[Problem]:
    # The weights' and tokenizer's forms are checked with the other runtime rules
    # (runtime_rules.weights_problems, tokenizer_problems); here only the cache that holds hf:// ones.
    problems: list[Problem] = []
    cache = spec.model.hf_cache
    if cache is not None:
        if cache.claim_name is not None and not _DNS_SUBDOMAIN.match(cache.claim_name):
            problems.append(
                Problem(
                    "spec.model.hfCache.claimName",
                    f"{cache.claim_name!r} is not a PersistentVolumeClaim name",
                )
            )
        if cache.size_limit is not None:
            problems += _quantity_problem("spec.model.hfCache.sizeLimit", cache.size_limit)
        if cache.claim_name is not None and cache.size_limit is not None:
            problems.append(
                Problem(
                    "spec.model.hfCache.sizeLimit", "applies to the emptyDir cache only, not to claimName"
                )
            )
    return problems


def _hardware_problems(spec: MoEDeploymentSpec) -> list[Problem]:
    rdma = spec.hardware.rdma
    if rdma is None:
        return []
    path = "spec.hardware.rdma"
    problems = []
    if spec.hardware.gpu is HardwarePreset.CPU:
        problems.append(Problem(path, "the cpu preset requests no devices; remove rdma or pick a GPU preset"))
    if not is_qualified_name(rdma.resource_name) or "/" not in rdma.resource_name:
        problems.append(
            Problem(
                f"{path}.resourceName",
                f"{rdma.resource_name!r} is not an extended resource name (domain/name)",
            )
        )
    for i, hca in enumerate(rdma.hcas or ()):
        if not hca or "," in hca or ":" in hca:
            problems.append(
                Problem(f"{path}.hcas[{i}]", f"{hca!r} is not one RDMA device name (e.g. mlx5_0)")
            )
    for i, net in enumerate(rdma.networks or ()):
        parts = net.split("/")
        if len(parts) > 2 or not all(_DNS_SUBDOMAIN.match(p) for p in parts):
            problems.append(
                Problem(
                    f"{path}.networks[{i}]",
                    f"{net!r} is not a NetworkAttachmentDefinition ([namespace/]name)",
                )
            )
    return problems


def _mooncake_problems(spec: MoEDeploymentSpec) -> list[Problem]:
    kv = spec.kv_transfer
    if kv.mooncake is None:
        return []
    path = "spec.kvTransfer.mooncake"
    if kv.backend is not KvTransferBackend.MOONCAKE:
        return [Problem(path, f"is set but kvTransfer.backend is {kv.backend.value}; set backend mooncake")]
    if kv.mooncake.protocol is not MooncakeProtocol.RDMA:
        return []
    rdma = spec.hardware.rdma
    if rdma is None:
        return [
            Problem(
                f"{path}.protocol", "rdma needs spec.hardware.rdma (the NICs and IPC_LOCK of the worker pods)"
            )
        ]
    if not kv.mooncake.device_name and not rdma.hcas:
        return [
            Problem(
                f"{path}.deviceName",
                "protocol rdma needs the NICs: set deviceName or spec.hardware.rdma.hcas",
            )
        ]
    return []


# ---- pod overrides --------------------------------------------------------------------------------
def _pool_pod_problems(path: str, pod: PoolPodOverrides, rdma: RdmaSpec | None) -> list[Problem]:
    annotations = (pc.MULTUS_NETWORKS_ANNOTATION,) if rdma is not None and rdma.networks else ()
    problems = _overrides_problems(path, pod, pc.reserved_env(rdma), annotations)
    if pod.shm_size is not None:
        problems += _quantity_problem(f"{path}.shmSize", pod.shm_size)
    if pod.queue is not None and not _DNS_SUBDOMAIN.match(pod.queue):
        problems.append(Problem(f"{path}.queue", f"{pod.queue!r} is not a queue name (a DNS-1123 subdomain)"))
    return problems


def _overrides_problems(
    path: str, pod: PodOverrides, reserved_env: frozenset[str], reserved_annotations: Sequence[str]
) -> list[Problem]:
    problems = []
    for i, secret in enumerate(pod.image_pull_secrets or ()):
        if not _DNS_SUBDOMAIN.match(secret.name):
            problems.append(
                Problem(f"{path}.imagePullSecrets[{i}].name", f"{secret.name!r} is not a Secret name")
            )
    if pod.priority_class_name is not None and not _DNS_SUBDOMAIN.match(pod.priority_class_name):
        problems.append(
            Problem(f"{path}.priorityClassName", f"{pod.priority_class_name!r} is not a PriorityClass name")
        )
    problems += _env_problems(f"{path}.env", pod, reserved_env)
    volumes = _volume_problems(f"{path}.volumes", pod.volumes or [])
    problems += volumes[1]
    problems += _mount_problems(f"{path}.volumeMounts", pod, volumes[0])
    problems += _metadata_problems(
        f"{path}.labels", pod.labels or {}, pc.RESERVED_LABEL_PREFIXES, (), label=True
    )
    problems += _metadata_problems(
        f"{path}.annotations", pod.annotations or {}, pc.RESERVED_ANNOTATION_PREFIXES, reserved_annotations
    )
    return problems


def _env_problems(path: str, pod: PodOverrides, reserved: frozenset[str]) -> list[Problem]:
    problems = []
    seen: set[str] = set()
    for i, var in enumerate(pod.env or ()):
        where = f"{path}[{i}]"
        if not _ENV_NAME.match(var.name):
            problems.append(Problem(f"{where}.name", f"{var.name!r} is not an environment variable name"))
        elif var.name.startswith(pc.MOEPLANE_ENV_PREFIX) or var.name in reserved:
            problems.append(
                Problem(
                    f"{where}.name", f"{var.name} is set by the operator (or KubeRay); choose another name"
                )
            )
        if var.name in seen:
            problems.append(Problem(f"{where}.name", f"{var.name} is given twice"))
        seen.add(var.name)
        if var.value is not None and var.value_from is not None:
            problems.append(Problem(where, "set value or valueFrom, not both"))
        if var.value_from is not None:
            keys = set(var.value_from)
            if len(keys) != 1 or not keys <= ENV_SOURCES:
                problems.append(
                    Problem(
                        f"{where}.valueFrom",
                        f"must hold exactly one of {sorted(ENV_SOURCES)}, got {sorted(keys)}",
                    )
                )
    return problems


def _volume_problems(path: str, volumes: Sequence[Mapping[str, Any]]) -> tuple[set[str], list[Problem]]:
    problems = []
    names: set[str] = set()
    for i, volume in enumerate(volumes):
        where = f"{path}[{i}]"
        name = volume.get("name")
        if not isinstance(name, str) or not _DNS_LABEL.match(name):
            problems.append(Problem(f"{where}.name", f"{name!r} is not a volume name (a DNS-1123 label)"))
        elif name in pc.RESERVED_VOLUMES or name.startswith(pc.PVC_VOLUME_PREFIX):
            problems.append(Problem(f"{where}.name", f"{name} is the operator's volume name; choose another"))
        elif name in names:
            problems.append(Problem(f"{where}.name", f"{name} is given twice"))
        else:
            names.add(name)
        sources = set(volume) - {"name"}
        if len(sources) != 1 or not sources <= VOLUME_SOURCES:
            problems.append(
                Problem(
                    where,
                    "needs exactly one volume source (emptyDir, persistentVolumeClaim, ...), got "
                    f"{sorted(sources)}",
                )
            )
        elif not isinstance(volume[next(iter(sources))], Mapping):
            problems.append(Problem(f"{where}.{next(iter(sources))}", "must be an object"))
    return names, problems


def _mount_problems(path: str, pod: PodOverrides, volumes: set[str]) -> list[Problem]:
    problems = []
    paths: set[str] = set()
    for i, mount in enumerate(pod.volume_mounts or ()):
        where = f"{path}[{i}]"
        if mount.name not in volumes:
            problems.append(
                Problem(f"{where}.name", f"{mount.name} is not one of this pod's volumes {sorted(volumes)}")
            )
        target = mount.mount_path.rstrip("/") or "/"
        if not target.startswith("/"):
            problems.append(Problem(f"{where}.mountPath", f"{mount.mount_path} is not an absolute path"))
        clash = next((r for r in pc.RESERVED_MOUNT_ROOTS if target == r or target.startswith(r + "/")), None)
        if clash:
            problems.append(
                Problem(
                    f"{where}.mountPath", f"{mount.mount_path} is under {clash}, where the operator mounts"
                )
            )
        if target in paths:
            problems.append(Problem(f"{where}.mountPath", f"{mount.mount_path} is mounted twice"))
        paths.add(target)
    return problems


def _metadata_problems(
    path: str,
    items: Mapping[str, str],
    reserved_prefixes: Sequence[str],
    reserved_keys: Sequence[str],
    label: bool = False,
) -> list[Problem]:
    problems = []
    for key, value in items.items():
        if not is_qualified_name(key):
            problems.append(Problem(f"{path}.{key}", "is not a Kubernetes key ([prefix/]name)"))
        elif key.startswith(tuple(reserved_prefixes)) or key in reserved_keys:
            problems.append(
                Problem(f"{path}.{key}", "is set by the operator (or KubeRay); choose another key")
            )
        if label and not _LABEL_VALUE.match(value):
            problems.append(Problem(f"{path}.{key}", f"{value!r} is not a label value"))
    return problems


def _quantity_problem(path: str, value: object) -> list[Problem]:
    try:
        parse_quantity(value)
    except QuantityError as exc:
        return [Problem(path, str(exc))]
    return []


def _resource_problems(
    path: str, resources: Mapping[str, Any] | None, shm_size: str | None = None
) -> list[Problem]:
    if not resources:
        return []
    problems = []
    for key in set(resources) - {"requests", "limits", "claims"}:
        problems.append(
            Problem(f"{path}.{key}", "is not a ResourceRequirements field (requests, limits, claims)")
        )
    parsed: dict[str, dict[str, Decimal]] = {}
    for part in ("requests", "limits"):
        values = resources.get(part) or {}
        if not isinstance(values, Mapping):
            problems.append(Problem(f"{path}.{part}", "must map resource names to quantities"))
            continue
        for name, value in values.items():
            try:
                parsed.setdefault(part, {})[name] = parse_quantity(value)
            except QuantityError as exc:
                problems.append(Problem(f"{path}.{part}.{name}", str(exc)))
    if shm_size is None or problems:
        return problems
    try:
        shm = parse_quantity(shm_size)
    except QuantityError:
        return problems  # reported at pod.shmSize
    request = parsed.get("requests", {}).get("memory")
    limit = parsed.get("limits", {}).get("memory")
    if request is not None and request < shm:
        problems.append(
            Problem(
                f"{path}.requests.memory",
                f"{resources['requests']['memory']} is below the worker's /dev/shm ({shm_size}), a "
                "memory-backed volume that counts against it; raise it or lower pod.shmSize",
            )
        )
    if limit is not None and limit <= shm:
        problems.append(
            Problem(
                f"{path}.limits.memory",
                f"{resources['limits']['memory']} leaves no room beside the worker's /dev/shm "
                f"({shm_size}); raise it or lower pod.shmSize",
            )
        )
    return problems
