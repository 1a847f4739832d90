"""KubeRay's names, copied from its source (ray-project/kuberay at tag v1.6.2), in one place.

Every constant cites the Go file it comes from; the pod runner and the fake KubeRay driver
(tests/kube/kuberay.py) use nothing else, so a name the operator reads either is KubeRay's or fails
its tests. `KUBERAY_VERSION` is the release copied.
"""

from __future__ import annotations

KUBERAY_VERSION = "v1.6.2"  # ray-operator/controllers/ray/utils/constant.go: KUBERAY_VERSION

# ---- RayCluster status (ray-operator/apis/ray/v1/raycluster_types.go) ---------------------------
# RayClusterConditionType values.
RAY_CLUSTER_PROVISIONED = "RayClusterProvisioned"
HEAD_POD_READY = "HeadPodReady"
REPLICA_FAILURE = "ReplicaFailure"  # the Go constant is RayClusterReplicaFailure; its value is this
RAY_CLUSTER_SUSPENDING = "RayClusterSuspending"
RAY_CLUSTER_SUSPENDED = "RayClusterSuspended"
# Custom reasons of those conditions.
ALL_POD_RUNNING_AND_READY_FIRST_TIME = "AllPodRunningAndReadyFirstTime"
RAY_CLUSTER_PODS_PROVISIONING = "RayClusterPodsProvisioning"
HEAD_POD_NOT_FOUND = "HeadPodNotFound"
HEAD_POD_RUNNING_AND_READY = "HeadPodRunningAndReady"
UNKNOWN_REASON = "Unknown"
# ClusterState (status.state, deprecated in favour of the conditions; KubeRay never clears "ready").
STATE_READY = "ready"
STATE_SUSPENDED = "suspended"

# Reasons of the ReplicaFailure condition: the errRayClusterReplicaFailure markers of
# ray-operator/controllers/ray/utils/constant.go (ErrFailedCreateWorkerPod, ...).
FAILED_DELETE_ALL_PODS = "FailedDeleteAllPods"
FAILED_DELETE_HEAD_POD = "FailedDeleteHeadPod"
FAILED_CREATE_HEAD_POD = "FailedCreateHeadPod"
FAILED_DELETE_WORKER_POD = "FailedDeleteWorkerPod"
FAILED_CREATE_WORKER_POD = "FailedCreateWorkerPod"

# ---- labels (ray-operator/controllers/ray/utils/constant.go) ------------------------------------
RAY_CLUSTER_LABEL = "ray.io/cluster"
RAY_NODE_TYPE_LABEL = "ray.io/node-type"
RAY_NODE_GROUP_LABEL = "ray.io/group"
RAY_NODE_LABEL = "ray.io/is-ray-node"
RAY_ID_LABEL = "ray.io/identifier"
# RayMultiHostIndexing (beta, on by default since v1.6: ray-operator/pkg/features/features.go).
RAY_WORKER_REPLICA_NAME_LABEL = "ray.io/worker-group-replica-name"
RAY_WORKER_REPLICA_INDEX_LABEL = "ray.io/worker-group-replica-index"
RAY_HOST_INDEX_LABEL = "ray.io/replica-host-index"
HEADLESS_SERVICE_LABEL = "ray.io/headless-worker-svc"
APP_NAME_LABEL = "app.kubernetes.io/name"
CREATED_BY_LABEL = "app.kubernetes.io/created-by"
APPLICATION_NAME = "kuberay"  # ApplicationName
COMPONENT_NAME = "kuberay-operator"  # ComponentName
HEAD_GROUP_LABEL_VALUE = "headgroup"  # RayNodeHeadGroupLabelValue
HEAD_NODE = "head"  # rayv1.HeadNode
WORKER_NODE = "worker"  # rayv1.WorkerNode

# ---- annotations ----------------------------------------------------------------------------------
OVERWRITE_CONTAINER_CMD_ANNOTATION = "ray.io/overwrite-container-cmd"
FT_ENABLED_ANNOTATION = "ray.io/ft-enabled"

# ---- container env (constant.go) ------------------------------------------------------------------
RAY_CLUSTER_NAME = "RAY_CLUSTER_NAME"
RAY_CLUSTER_NAMESPACE = "RAY_CLUSTER_NAMESPACE"
RAY_IP = "RAY_IP"
FQ_RAY_IP = "FQ_RAY_IP"
RAY_PORT = "RAY_PORT"
RAY_ADDRESS = "RAY_ADDRESS"
RAY_CLOUD_INSTANCE_ID = "RAY_CLOUD_INSTANCE_ID"
RAY_NODE_TYPE_NAME = "RAY_NODE_TYPE_NAME"
KUBERAY_GEN_RAY_START_CMD = "KUBERAY_GEN_RAY_START_CMD"
RAY_USAGE_STATS_KUBERAY_IN_USE = "RAY_USAGE_STATS_KUBERAY_IN_USE"
RAY_USAGE_STATS_EXTRA_TAGS = "RAY_USAGE_STATS_EXTRA_TAGS"
RAY_DASHBOARD_ENABLE_K8S_DISK_USAGE = "RAY_DASHBOARD_ENABLE_K8S_DISK_USAGE"
LOCAL_HOST = "127.0.0.1"  # LOCAL_HOST: the head's RAY_ADDRESS host

# ---- ports and names (constant.go, common/pod.go) --------------------------------------------------
DEFAULT_GCS_SERVER_PORT = 6379
DEFAULT_CLIENT_PORT = 10001
DEFAULT_DASHBOARD_PORT = 8265
DEFAULT_METRICS_PORT = 8080
DEFAULT_DASHBOARD_AGENT_LISTEN_PORT = 52365
DEFAULT_SERVING_PORT = 8000
METRICS_PORT_NAME = "metrics"
CLIENT_PORT_NAME = "client"
GCS_SERVER_PORT_NAME = "gcs-server"
DASHBOARD_PORT_NAME = "dashboard"
SERVING_PORT_NAME = "serve"
RAY_CONTAINER_INDEX = 0  # "the Ray container must be the first application container"
SHARED_MEMORY_VOLUME_NAME = "shared-mem"  # common/pod.go
SHARED_MEMORY_MOUNT_PATH = "/dev/shm"
PLASMA_DIRECTORY_PARAM = "plasma-directory"
WAIT_GCS_READY_CONTAINER = "wait-gcs-ready"
HEAD_SERVICE_SUFFIX = "head-svc"  # utils.GenerateHeadServiceName: <cluster>-head-svc
HEADLESS_SERVICE_SUFFIX = "headless"  # HeadlessServiceSuffix: <cluster>-headless
DEFAULT_DOMAIN_NAME = "cluster.local"  # utils/util.go: DefaultDomainName
CONTAINERS_NOT_READY = "ContainersNotReady"  # utils/util.go

# ---- probes KubeRay injects into the Ray container (constant.go, common/pod.go) ------------------
READINESS_INITIAL_DELAY_S = 10
READINESS_TIMEOUT_S = 2
HEAD_READINESS_TIMEOUT_S = 5
READINESS_PERIOD_S = 5
READINESS_SUCCESS_THRESHOLD = 1
READINESS_FAILURE_THRESHOLD = 10
LIVENESS_INITIAL_DELAY_S = 30
LIVENESS_TIMEOUT_S = 2
HEAD_LIVENESS_TIMEOUT_S = 5
LIVENESS_PERIOD_S = 5
LIVENESS_SUCCESS_THRESHOLD = 1
LIVENESS_FAILURE_THRESHOLD = 120
RAY_AGENT_RAYLET_HEALTH_PATH = "api/local_raylet_healthz"
RAY_DASHBOARD_GCS_HEALTH_PATH = "api/gcs_healthz"
RAY_NODE_HEALTH_PATH = "/api/healthz"  # one endpoint from Ray 2.53 on (supportsUnifiedHealthCheck)
UNIFIED_HEALTH_CHECK_RAY_VERSION = (2, 53, 0)
# BaseWgetHealthCommand: timeout_s, port, path.
BASE_WGET_HEALTH_COMMAND = "wget --tries 1 -T {timeout} -q -O- http://localhost:{port}/{path} | grep success"
