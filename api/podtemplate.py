"""What a manifest may add to the pods the operator makes: Kubernetes pod-template fields that pass
through as they are, the RDMA fabric, the Hugging Face cache, and Mooncake's transport.

Kubernetes structures keep their Kubernetes wire names, so a snippet copied from a pod spec fits.
Small, stable structures (env vars, mounts, security contexts) are typed, so a typo is refused by the
CRD and by `moeplane validate`; open-ended ones (volume sources, `valueFrom`) pass through as
objects and are checked by `podchecks.py` for what would otherwise only fail at pod creation.

The operator's secure defaults (non-root, no privilege escalation, every capability dropped,
seccomp RuntimeDefault) are merged under these, key by key: a field given here wins.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from moeplane.api.base import ApiModel
from pydantic import Field


class SeccompType(StrEnum):
    RUNTIME_DEFAULT = "RuntimeDefault"
    LOCALHOST = "Localhost"
    UNCONFINED = "Unconfined"


class MountPropagation(StrEnum):
    NONE = "None"
    HOST_TO_CONTAINER = "HostToContainer"
    BIDIRECTIONAL = "Bidirectional"


class FsGroupChangePolicy(StrEnum):
    ALWAYS = "Always"
    ON_ROOT_MISMATCH = "OnRootMismatch"


class ImagePullSecret(ApiModel):
    """A Secret of type kubernetes.io/dockerconfigjson in the pod's namespace."""

    name: str = Field(min_length=1, description="Name of the image pull Secret.")


class EnvVar(ApiModel):
    """A container environment variable, as in a Kubernetes container spec."""

    name: str = Field(min_length=1, description="Variable name.")
    value: str | None = Field(None, description="Literal value.")
    value_from: dict[str, Any] | None = Field(
        None,
        description="Kubernetes EnvVarSource: one of secretKeyRef, configMapKeyRef, fieldRef, "
        "resourceFieldRef.",
    )


class VolumeMount(ApiModel):
    """A mount of one of `volumes` into the container, as in a Kubernetes container spec."""

    name: str = Field(min_length=1, description="Name of a volume in `volumes`.")
    mount_path: str = Field(min_length=1, description="Absolute path in the container.")
    read_only: bool | None = Field(None, description="Mount read-only.")
    sub_path: str | None = Field(None, description="Path inside the volume to mount.")
    sub_path_expr: str | None = Field(None, description="subPath with $(VAR) expansion.")
    mount_propagation: MountPropagation | None = Field(
        None, description="None, HostToContainer or Bidirectional."
    )
    recursive_read_only: str | None = Field(None, description="Disabled, IfPossible or Enabled.")


class Capabilities(ApiModel):
    add: list[str] | None = Field(None, description="Linux capabilities to add.")
    drop: list[str] | None = Field(None, description="Linux capabilities to drop (ALL for every one).")


class SeccompProfile(ApiModel):
    type: SeccompType = Field(description="RuntimeDefault, Localhost or Unconfined.")
    localhost_profile: str | None = Field(None, description="Profile file, for type Localhost.")


class SecurityContext(ApiModel):
    """A container securityContext (Kubernetes SecurityContext)."""

    allow_privilege_escalation: bool | None = Field(None, description="Default false.")
    app_armor_profile: dict[str, Any] | None = Field(None, description="Kubernetes AppArmorProfile.")
    capabilities: Capabilities | None = Field(None, description="Default: drop ALL.")
    privileged: bool | None = Field(None, description="Run privileged (refused by Pod Security baseline).")
    proc_mount: str | None = Field(None, description="Default or Unmasked.")
    read_only_root_filesystem: bool | None = Field(None, description="Mount the image read-only.")
    run_as_group: int | None = Field(None, ge=0, description="GID of the container's processes.")
    run_as_non_root: bool | None = Field(None, description="Refuse to start as uid 0.")
    run_as_user: int | None = Field(None, ge=0, description="UID of the container's processes.")
    se_linux_options: dict[str, Any] | None = Field(None, description="Kubernetes SELinuxOptions.")
    seccomp_profile: SeccompProfile | None = Field(None, description="Default RuntimeDefault.")
    windows_options: dict[str, Any] | None = Field(
        None, description="Kubernetes WindowsSecurityContextOptions."
    )


class PodSecurityContext(ApiModel):
    """A pod securityContext (Kubernetes PodSecurityContext)."""

    app_armor_profile: dict[str, Any] | None = Field(None, description="Kubernetes AppArmorProfile.")
    fs_group: int | None = Field(None, ge=0, description="Group owning the pod's volumes. Default 100.")
    fs_group_change_policy: FsGroupChangePolicy | None = Field(
        None, description="Always or OnRootMismatch (the default: no recursive chown of a ready volume)."
    )
    run_as_group: int | None = Field(None, ge=0, description="Default 100 (the worker image's group).")
    run_as_non_root: bool | None = Field(None, description="Default true.")
    run_as_user: int | None = Field(None, ge=0, description="Default 1000 (the worker image's user).")
    se_linux_change_policy: str | None = Field(None, description="MountOption or Recursive.")
    se_linux_options: dict[str, Any] | None = Field(None, description="Kubernetes SELinuxOptions.")
    seccomp_profile: SeccompProfile | None = Field(None, description="Default RuntimeDefault.")
    supplemental_groups: list[int] | None = Field(None, description="Extra GIDs of every container.")
    supplemental_groups_policy: str | None = Field(None, description="Merge or Strict.")
    sysctls: list[dict[str, Any]] | None = Field(None, description="Namespaced sysctls (name, value).")
    windows_options: dict[str, Any] | None = Field(
        None, description="Kubernetes WindowsSecurityContextOptions."
    )


class PodOverrides(ApiModel):
    """Kubernetes pod-template fields added to the pods the operator makes."""

    image_pull_secrets: list[ImagePullSecret] | None = Field(
        None,
        description="Image pull Secrets, besides the operator's own (the chart's imagePullSecrets).",
    )
    security_context: SecurityContext | None = Field(
        None,
        description="Merged over the container default (allowPrivilegeEscalation false, capabilities "
        "drop ALL; RDMA workers add IPC_LOCK).",
    )
    pod_security_context: PodSecurityContext | None = Field(
        None,
        description="Merged over the pod default (runAsNonRoot, runAsUser 1000, runAsGroup 100, "
        "fsGroup 100, seccomp RuntimeDefault).",
    )
    priority_class_name: str | None = Field(None, min_length=1, description="PriorityClass of the pods.")
    scheduler_name: str | None = Field(
        None,
        min_length=1,
        description="Scheduler of the pods. `volcano` also asks KubeRay's Volcano integration (KubeRay "
        "run with batchScheduler.name=volcano) to gang-schedule each RayCluster.",
    )
    env: list[EnvVar] | None = Field(
        None, description="Extra env of the main container; names the operator sets are refused."
    )
    volumes: list[dict[str, Any]] | None = Field(
        None, description="Extra Kubernetes volumes of the pods (each a name and one volume source)."
    )
    volume_mounts: list[VolumeMount] | None = Field(
        None, description="Mounts of `volumes` into the main container."
    )
    annotations: dict[str, str] | None = Field(None, description="Extra pod annotations.")
    labels: dict[str, str] | None = Field(
        None,
        description="Extra pod labels (app.kubernetes.io/*, moeplane.io/* and ray.io/* are the operator's).",
    )
    host_network: bool | None = Field(
        None,
        description="Run in the node's network namespace (workers only for pools; dnsPolicy becomes "
        "ClusterFirstWithHostNet). Refused by Pod Security baseline.",
    )


class PoolPodOverrides(PodOverrides):
    """Pod-template fields of a pool's Ray pods (head and workers)."""

    queue: str | None = Field(
        None,
        min_length=1,
        description="Batch queue: the Volcano queue with schedulerName volcano, otherwise a Kueue "
        "LocalQueue, which admits each RayCluster of the pool all-or-nothing.",
    )

    shm_size: str | None = Field(
        None,
        description="Size of each worker's memory-backed /dev/shm (NCCL, Ray's object store); default "
        "64Gi on GPUs, 2Gi on cpu. It counts against the worker's memory request, which defaults to "
        "this plus 16Gi per GPU (2Gi per cpu rank).",
    )


class RdmaSpec(ApiModel):
    """The RDMA fabric between the nodes of a multi-node EP group (NCCL, UCX, Mooncake rdma)."""

    resource_name: str = Field(
        min_length=1, description="Extended resource of one RDMA NIC (e.g. rdma/hca), requested once per GPU."
    )
    hcas: list[str] | None = Field(
        None, description="RDMA devices to use (e.g. mlx5_0): NCCL_IB_HCA and UCX_NET_DEVICES."
    )
    ib_port: int = Field(1, ge=1, description="Port of each HCA in UCX_NET_DEVICES (mlx5_0:1).")
    gid_index: int | None = Field(None, ge=0, description="RoCE GID index: NCCL_IB_GID_INDEX.")
    socket_interface: str | None = Field(
        None,
        min_length=1,
        description="Network interface of bootstrap and socket traffic: NCCL_SOCKET_IFNAME and "
        "GLOO_SOCKET_IFNAME.",
    )
    networks: list[str] | None = Field(
        None,
        description="Multus NetworkAttachmentDefinitions ([namespace/]name) attached to the worker "
        "pods (annotation k8s.v1.cni.cncf.io/networks).",
    )


class HfCacheSpec(ApiModel):
    """The Hugging Face cache of hf:// locations, mounted at /mnt/moeplane/hf (HF_HOME)."""

    claim_name: str | None = Field(
        None,
        min_length=1,
        description="PersistentVolumeClaim holding the cache (ReadWriteMany across nodes); unset: an "
        "emptyDir per pod, filled by each pod's init container.",
    )
    size_limit: str | None = Field(None, min_length=1, description="sizeLimit of the emptyDir cache.")


class MooncakeProtocol(StrEnum):
    TCP = "tcp"
    RDMA = "rdma"


class MooncakeSpec(ApiModel):
    """Mooncake's transfer engine (kvTransfer.backend mooncake)."""

    protocol: MooncakeProtocol = Field(
        MooncakeProtocol.TCP, description="tcp, or rdma (needs spec.hardware.rdma)."
    )
    device_name: str | None = Field(
        None,
        min_length=1,
        description="RDMA NICs for protocol rdma, comma-separated (e.g. mlx5_0,mlx5_1); defaults to "
        "spec.hardware.rdma.hcas.",
    )


class ModelStorage(ApiModel):
    """Where a pool's pods find the model: the locations the operator mounts (see api/locations.py)."""

    weights: str | None = Field(None, min_length=1, description="spec.model.weights.uri.")
    tokenizer: str | None = Field(None, min_length=1, description="spec.model.tokenizer.")
    hf_cache: HfCacheSpec | None = Field(None, description="spec.model.hfCache.")
