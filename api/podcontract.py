"""The contract between the operator's pods and what runs in them: paths, env names, labels.

One definition, read by the operator's builders (which set them), by `podchecks.py` (which refuses
user fields that would collide with them) and by the processes in the pods (which read them).

Paths inside every pod the operator makes:
- `/etc/moeplane/engine/engine.json`: the deployment's engine ConfigMap, the runtime document
  (`api/runtime.py`; `MOEPLANE_ENGINE_CONFIG`);
- `/etc/moeplane/eplb-load/KEY`: a static-EPLB `configmap://NAME/KEY` (`MOEPLANE_EPLB_LOAD_FILE`);
- `/mnt/moeplane` (`MOEPLANE_VOLUME_ROOT`): every model volume; `pvc://CLAIM/PATH` is
  `/mnt/moeplane/pvc/CLAIM/PATH`, the Hugging Face cache is `/mnt/moeplane/hf` (`HF_HOME`);
- `/tmp/ray`: Ray's session directory, shared by the head and the `moeplane pool` sidecar;
- `/dev/shm`: a memory-backed emptyDir in every worker pod.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moeplane.api.enums import KvTransferBackend
from moeplane.api.locations import DEFAULT_VOLUME_ROOT, HF_HOME_MOUNT_PATH, VOLUME_ROOT_ENV
from moeplane.api.podtemplate import MooncakeProtocol, MooncakeSpec, RdmaSpec

if TYPE_CHECKING:
    from moeplane.api.spec import MoEDeploymentSpec

# ---- paths ----------------------------------------------------------------------------------------
ENGINE_DIR = "/etc/moeplane/engine"  # the deployment's engine ConfigMap, mounted read-only
ENGINE_KEY = "engine.json"  # its one key: the runtime document (api/runtime.py)
ENGINE_PATH = f"{ENGINE_DIR}/{ENGINE_KEY}"
EPLB_LOAD_DIR = "/etc/moeplane/eplb-load"
RAY_TMP_DIR = "/tmp/ray"
SHM_DIR = "/dev/shm"
VOLUME_ROOT = DEFAULT_VOLUME_ROOT
HF_HOME = HF_HOME_MOUNT_PATH
# A user's volumeMount may not sit at or under these: the operator's mounts live there.
RESERVED_MOUNT_ROOTS = ("/etc/moeplane", VOLUME_ROOT, RAY_TMP_DIR, SHM_DIR)

# ---- volumes the operator adds (a user's volume may not take these names) --------------------------
ENGINE_VOLUME = "engine"
EPLB_LOAD_VOLUME = "eplb-load"
RAY_TMP_VOLUME = "ray-tmp"
SHM_VOLUME = "dshm"
HF_CACHE_VOLUME = "hf-cache"
PVC_VOLUME_PREFIX = "pvc-"  # pvc-<claim> (shortened with a hash when the claim name is long)
RESERVED_VOLUMES = frozenset(
    {ENGINE_VOLUME, EPLB_LOAD_VOLUME, RAY_TMP_VOLUME, SHM_VOLUME, HF_CACHE_VOLUME}
)

# ---- env ------------------------------------------------------------------------------------------
MOEPLANE_ENV_PREFIX = "MOEPLANE_"  # every MOEPLANE_* name is the operator's
# Both the pool and the frontend:
ENGINE_CONFIG_ENV = "MOEPLANE_ENGINE_CONFIG"  # path of engine.json
REDIS_URL_ENV = "MOEPLANE_REDIS_URL"  # the worker registry's Redis (from the Secret)
GRPC_TOKEN_ENV = "MOEPLANE_GRPC_TOKEN"  # the workers' gRPC token (from the Secret; optional)
# A pool's `moeplane pool` sidecar (workers/pool/settings.py):
ROLE_ENV = "MOEPLANE_ROLE"  # prefill or decode
POOL_ENV = "MOEPLANE_POOL"  # the MoEPool's name
REVISION_ENV = "MOEPLANE_REVISION"  # the RayCluster's revision (group ids stay unique in a rollout)
POOL_LAYOUT_ENV = "MOEPLANE_POOL_LAYOUT"  # the MoEPool's spec.layout, as JSON (GroupLayout)
POD_IP_ENV = "MOEPLANE_POD_IP"  # the address the groups advertise (optional)
EPLB_LOAD_FILE_ENV = "MOEPLANE_EPLB_LOAD_FILE"  # where the pod sees spec.eplb.loadFile (static)
VOLUME_ROOT_ENV_NAME = VOLUME_ROOT_ENV
HF_HOME_ENV = "HF_HOME"
HF_OFFLINE_ENV = "HF_HUB_OFFLINE"  # serving containers read hf:// from the cache only
# What KubeRay sets in every Ray container, and would not replace if a user set it
# (ray-operator/controllers/ray/utils/constant.go, KubeRay v1.6.0).
KUBERAY_ENV = frozenset(
    {
        "RAY_CLUSTER_NAME",
        "RAY_CLUSTER_NAMESPACE",
        "RAY_IP",
        "FQ_RAY_IP",
        "RAY_PORT",
        "RAY_ADDRESS",
        "RAY_NODE_TYPE_NAME",
        "RAY_CLOUD_INSTANCE_ID",
        "KUBERAY_GEN_RAY_START_CMD",
    }
)
OPERATOR_ENV = frozenset({HF_HOME_ENV, HF_OFFLINE_ENV, "RAY_OVERRIDE_LABELS"})  # and every MOEPLANE_*


def rdma_env(rdma: RdmaSpec) -> list[tuple[str, str]]:
    """NCCL, Gloo and UCX env of the worker pods for the RDMA fabric `rdma`, in a stable order."""
    out: list[tuple[str, str]] = []
    if rdma.hcas:
        out.append(("NCCL_IB_HCA", ",".join(rdma.hcas)))
        out.append(("UCX_NET_DEVICES", ",".join(f"{hca}:{rdma.ib_port}" for hca in rdma.hcas)))
    if rdma.gid_index is not None:
        out.append(("NCCL_IB_GID_INDEX", str(rdma.gid_index)))
    if rdma.socket_interface:
        out.append(("NCCL_SOCKET_IFNAME", rdma.socket_interface))
        out.append(("GLOO_SOCKET_IFNAME", rdma.socket_interface))
    return out


def mooncake_settings(spec: MoEDeploymentSpec) -> MooncakeSpec | None:
    """What the ranks give Mooncake's transfer engine (None: another backend): the spec's
    `kvTransfer.mooncake`, an rdma transport's devices defaulting to `hardware.rdma.hcas`."""
    if spec.kv_transfer.backend is not KvTransferBackend.MOONCAKE:
        return None
    mooncake = spec.kv_transfer.mooncake or MooncakeSpec()
    rdma = spec.hardware.rdma
    if mooncake.protocol is MooncakeProtocol.RDMA and not mooncake.device_name and rdma and rdma.hcas:
        return mooncake.model_copy(update={"device_name": ",".join(rdma.hcas)})
    return mooncake


def reserved_env(rdma: RdmaSpec | None) -> frozenset[str]:
    """Env names a user may not set in a pool's pods (besides every MOEPLANE_* name)."""
    names = set(OPERATOR_ENV | KUBERAY_ENV)
    if rdma is not None:
        names |= {name for name, _ in rdma_env(rdma)}
    return frozenset(names)


# ---- labels and annotations -------------------------------------------------------------------------
# Label prefixes the operator and KubeRay write on pods; a user's pod label may not use them.
RESERVED_LABEL_PREFIXES = ("app.kubernetes.io/", "moeplane.io/", "ray.io/")
RESERVED_ANNOTATION_PREFIXES = ("moeplane.io/", "ray.io/")
MULTUS_NETWORKS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"

# KubeRay's multi-host replica labels (feature RayMultiHostIndexing, on by default from KubeRay
# v1.6.0; ray-operator/controllers/ray/utils/constant.go and common/pod.go): on every worker pod of a
# group with numOfHosts > 1, the replica group's unique name and the host's index in it.
RAY_REPLICA_NAME_LABEL = "ray.io/worker-group-replica-name"
RAY_REPLICA_INDEX_LABEL = "ray.io/worker-group-replica-index"
RAY_HOST_INDEX_LABEL = "ray.io/replica-host-index"

# One EP group = one KubeRay replica group. Every worker pod tells its Ray node which replica (and
# which host of it) it is, as Ray node labels (`RAY_OVERRIDE_LABELS`, read by `ray start`, Ray >=
# 2.49): the pool's supervisor places group g's ranks on the nodes labelled g, rank r on host
# r // gpusPerNode. The values come from KubeRay's replica labels through the downward API.
REPLICA_INDEX_ENV = "MOEPLANE_REPLICA_INDEX"
HOST_INDEX_ENV = "MOEPLANE_HOST_INDEX"
RAY_LABELS_ENV = "RAY_OVERRIDE_LABELS"
NODE_REPLICA_LABEL = "moeplane.io/replica-index"  # a Ray node label, not a Kubernetes one
NODE_HOST_LABEL = "moeplane.io/host-index"
# `moeplane pool --ready-file`: present while every group the pool should run is up; the head
# pod's readiness probe (KubeRay's head Service publishes not-ready addresses, so workers still join).
POOL_READY_FILE = "/tmp/moeplane-pool.ready"


def group_id(pool: str, revision: str, index: int) -> str:
    """The registry id of EP group `index` (= its KubeRay replica index) of a pool revision: unique
    across a rollout, where two revisions of a pool run side by side."""
    rev = f"-{revision}" if revision else ""
    return f"{pool}{rev}-g{index}"


def of_pool(group: str, pool: str) -> bool:
    """Whether `group` is a `group_id` of `pool` (any revision)."""
    head, sep, index = group.rpartition("-g")
    if not (sep and index.isdigit()):
        return False
    return head == pool or head.rpartition("-")[0] == pool


def group_index(group: str, pool: str, revision: str) -> int | None:
    """The replica index in a `group_id` of this pool revision; None for another pool or revision."""
    head = group_id(pool, revision, 0)[:-1]
    tail = group[len(head):] if group.startswith(head) else ""
    return int(tail) if tail.isdigit() else None
KUBERAY_MIN_VERSION = "1.6.0"

# KubeRay's batch-scheduler integration, read from the RayCluster's labels
# (ray-operator/controllers/ray/batchscheduler/volcano/volcano_scheduler.go and utils/constant.go,
# KubeRay v1.6.0): the Volcano PodGroup's queue and priority class. Kueue's RayCluster integration
# reads its LocalQueue from `kueue.x-k8s.io/queue-name` (kueue.sigs.k8s.io/docs/tasks/run/rayclusters).
VOLCANO_SCHEDULER = "volcano"
VOLCANO_QUEUE_LABEL = "volcano.sh/queue-name"
RAY_PRIORITY_CLASS_LABEL = "ray.io/priority-class-name"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
