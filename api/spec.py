"""The MoEDeployment spec: what the user asks for, in typed pydantic models.

These models are the single source of truth: the CRDs (`crdgen.py`), the validation rules
(`validation.py`) and the resolved layout (`layout.py`) are all derived from them. Attributes are
snake_case with units; on the wire they are camelCase (`ApiModel`). Field descriptions become the
CRD's (and the Helm values schema's) descriptions, so they are written for users.

Structural checks (types, ranges, enums) happen when a model is built; cross-field rules (expert
divisibility, memory fit...) live in `validation.py`, and `parse_deployment` runs both.
"""

from __future__ import annotations

from typing import Any, Final, Literal, TypeVar

from moeplane.api.arch import ModelArch
from moeplane.api.base import ApiModel
from moeplane.api.configmapref import (
    MAX_LOAD_FILE_CHARS,
    ConfigMapKeyRef,
    check_load_file,
    parse_configmap_ref,
)
from moeplane.api.enums import (
    EplbAlgorithm,
    EplbMode,
    KvTransferBackend,
    LayoutChanges,
    PerfModelSource,
    Predictor,
    Role,
    WeightsFormat,
)
from moeplane.api.errors import Problem, SpecInvalid, pydantic_problem
from moeplane.api.hardware import HardwarePreset, HardwareSpec, hardware_preset
from moeplane.api.hf_config import read_hf_config
from moeplane.api.layout import GroupLayout
from moeplane.api.locations import LocationError, LocationKind, parse_location
from moeplane.api.podtemplate import (
    HfCacheSpec,
    ModelStorage,
    MooncakeSpec,
    PodOverrides,
    PoolPodOverrides,
    RdmaSpec,
)
from moeplane.api.presets import ModelPreset, model_preset
from moeplane.api.status import Condition, MoEDeploymentStatus
from pydantic import ConfigDict, Field, ValidationError, field_validator

KiB = 1024
MiB = 1024 * KiB


# ---- spec -------------------------------------------------------------------------------------


class WeightsSpec(ApiModel):
    """Where the model's weights come from."""

    format: WeightsFormat = Field(
        WeightsFormat.SAFETENSORS,
        description="safetensors (Hugging Face DeepSeek-V3 tensor names) or random (seeded, for tests).",
    )
    uri: str | None = Field(
        None,
        min_length=1,
        description="Location of the Hugging Face checkpoint directory (config.json, safetensors, "
        "tokenizer): an absolute path (in Kubernetes: baked into the image), pvc://CLAIM/PATH (the "
        "claim is mounted read-only into every pod) or hf://ORG/REPO[@REVISION] (fetched into "
        "spec.model.hfCache by an init container). Required for safetensors. With a local path and "
        "no preset or architecture, config.json names the model.",
    )
    seed: int = Field(0, ge=0, description="Seed of the random initialisation (format random).")


class ModelSpec(ApiModel):
    """The model to serve: a preset name or an explicit architecture, plus weights and tokenizer."""

    preset: ModelPreset | None = Field(
        None, description="Model preset: deepseek-v3, deepseek-r1, kimi-k2, qwen3-235b-a22b or tiny."
    )
    architecture: ModelArch | None = Field(
        None, description="Explicit architecture constants, in place of a preset."
    )
    weights: WeightsSpec = Field(description="Where the weights come from.")
    tokenizer: str | None = Field(
        None,
        min_length=1,
        description="Tokenizer location, in the forms of weights.uri; defaults to the weights' "
        "location (random weights: bytes). `bytes` selects the byte-level tokenizer of the tiny model.",
    )
    hf_cache: HfCacheSpec | None = Field(
        None,
        description="The Hugging Face cache of hf:// locations in Kubernetes: a PersistentVolumeClaim, "
        "or (unset) an emptyDir per pod.",
    )
    served_model_name: str | None = Field(
        None,
        min_length=1,
        description="Model name on the OpenAI-compatible API; defaults to the deployment's name.",
    )

    def resolve_arch(self) -> ModelArch:
        """The architecture to serve: the preset's, the explicit one, or (with neither) the one in
        the config.json of a local checkpoint directory. ValueError when both are set, or neither
        and the weights are not a readable local directory (HFConfigError names the file)."""
        if self.preset is not None and self.architecture is not None:
            raise ValueError("set exactly one of spec.model.preset and spec.model.architecture")
        if self.architecture is not None:
            return self.architecture
        if self.preset is not None:
            return model_preset(self.preset)
        directory = self.local_checkpoint_dir()
        if directory is None:
            raise ValueError(
                "set spec.model.preset or spec.model.architecture, or point spec.model.weights.uri at a "
                "local checkpoint directory whose config.json names the architecture"
            )
        return read_hf_config(directory).arch

    def local_checkpoint_dir(self) -> str | None:
        """The weights' directory when `weights.uri` is a local path (else None)."""
        uri = self.weights.uri
        if uri is None:
            return None
        try:
            location = parse_location(uri)
        except LocationError:
            return None
        return location.path if location.kind is LocationKind.LOCAL else None


class HardwareConfig(ApiModel):
    """The GPU type the pools run on."""

    gpu: HardwarePreset = Field(
        description="GPU preset: h100, h200, h800, b200, gb200, or cpu for the embedded default."
    )
    gpus_per_node: int | None = Field(
        None, gt=0, description="GPUs per node; overrides the preset's value."
    )
    gpu_resource_name: str = Field(
        "nvidia.com/gpu", min_length=1, description="Extended resource name of one GPU."
    )
    rdma: RdmaSpec | None = Field(
        None,
        description="The RDMA fabric of the worker pods: the NIC resource, IPC_LOCK, and the NCCL/UCX "
        "env a multi-node EP group needs.",
    )

    def figures(self) -> HardwareSpec:
        """The preset's datasheet figures with `gpusPerNode` applied."""
        preset = hardware_preset(self.gpu)
        if self.gpus_per_node is None:
            return preset
        return preset.model_copy(update={"gpus_per_node": self.gpus_per_node})

    @property
    def effective_gpus_per_node(self) -> int:
        return self.figures().gpus_per_node


class PoolSpec(ApiModel):
    """One pool (prefill or decode): its expert-parallel layout and its scaling bounds."""

    expert_parallel: int = Field(
        gt=0,
        description="EP size: GPUs per EP group. At most gpusPerNode, or a multiple of it.",
    )
    data_parallel_attention: int | None = Field(
        None,
        gt=0,
        description="Attention data-parallel size within an EP group; attention is tensor-parallel "
        "over expertParallel / dataParallelAttention GPUs. Defaults to expertParallel (every GPU "
        "owns its own requests and KV cache).",
    )
    redundant_experts: int = Field(
        0,
        ge=0,
        description="Extra expert slots per layer for replicas of hot experts. (routed experts + "
        "redundantExperts) must be divisible by expertParallel.",
    )
    replicas: int = Field(
        1, ge=0, description="EP groups to run now (the MoEPool's scale subresource counts groups)."
    )
    min_replicas: int = Field(1, ge=0, description="Fewest EP groups the planner may scale to.")
    max_replicas: int | None = Field(
        None, ge=0, description="Most EP groups the planner may scale to; unbounded if unset."
    )
    gpu_memory_utilization: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Fraction of each GPU's memory for weights and KV cache (the rest is "
        "activations and communication buffers).",
    )
    min_kv_tokens_per_gpu: int = Field(
        4096,
        ge=0,
        description="Smallest KV cache, in tokens per GPU, that must fit beside the weights.",
    )
    # Pod-level overrides; the Kubernetes structures pass through as they are.
    image: str | None = Field(None, min_length=1, description="Container image; overrides spec.image.")
    resources: dict[str, Any] | None = Field(
        None,
        description="Kubernetes ResourceRequirements of the worker container (CPU, memory...), "
        "merged over the defaults sized for /dev/shm. GPU and RDMA requests are added from the layout.",
    )
    node_selector: dict[str, str] | None = Field(None, description="Node selector of the pods.")
    tolerations: list[dict[str, Any]] | None = Field(None, description="Kubernetes tolerations.")
    affinity: dict[str, Any] | None = Field(None, description="Kubernetes affinity.")
    topology_key: str | None = Field(
        None,
        min_length=1,
        description="Node label (e.g. a rack or NVLink-clique label) whose value every host of one "
        "EP group shares: pod affinity on KubeRay's replica-group label (KubeRay >= 1.6, "
        "Kubernetes >= 1.31).",
    )
    pod: PoolPodOverrides | None = Field(None, description="Pod-template fields of the pool's pods.")

    @property
    def attention_dp_size(self) -> int:
        return self.data_parallel_attention or self.expert_parallel


class EplbSpec(ApiModel):
    """Expert-parallel load balancing."""

    mode: EplbMode = Field(EplbMode.ONLINE, description="off, static (from loadFile) or online.")

    @field_validator("mode", mode="before")
    @classmethod
    def _mode_not_a_yaml_boolean(cls, value: object) -> object:
        # YAML 1.1 reads an unquoted `off` as false: say so instead of "not a valid enum member".
        if isinstance(value, bool):
            raise ValueError(
                f"got the boolean {str(value).lower()}; YAML reads an unquoted off as false, write "
                'mode: "off" (quoted), static or online'
            )
        return value
    algorithm: EplbAlgorithm = Field(
        EplbAlgorithm.AUTO,
        description="Placement policy: auto (moeplane's own), or DeepSeek's hierarchical or global.",
    )
    window_seconds: float = Field(
        60.0, gt=0, description="Sliding window of expert-load counts; at most intervalSeconds."
    )
    interval_seconds: float = Field(300.0, gt=0, description="How often the balancer runs.")
    balancedness_threshold: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Rebalance when mean/max per-GPU token load falls below this.",
    )
    load_file: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_LOAD_FILE_CHARS,
        description="Expert-load file of mode static: [layers, experts] token counts as .json or "
        ".pt. Either a path the pool's pods see (baked into the image or on a volume; relative to "
        "the manifest in the embedded stack) or configmap://NAME/KEY, a key of a ConfigMap in the "
        "deployment's namespace that the operator mounts read-only into the pool's pods (Kubernetes "
        "only; a missing ConfigMap holds the pods in ContainerCreating). Required for static.",
    )

    @field_validator("load_file")
    @classmethod
    def _load_file_form(cls, value: str | None) -> str | None:
        return None if value is None else check_load_file(value)

    @property
    def load_configmap(self) -> ConfigMapKeyRef | None:
        """The ConfigMap key `loadFile` names, or None when it is a path (or unset)."""
        return None if self.load_file is None else parse_configmap_ref(self.load_file)


class KvTransferSpec(ApiModel):
    """How decode pulls the KV cache from prefill."""

    backend: KvTransferBackend = Field(KvTransferBackend.GRPC, description="grpc or mooncake.")
    chunk_bytes: int = Field(
        512 * KiB, ge=256 * KiB, le=1 * MiB, description="Bytes per streamed chunk, 256 KiB to 1 MiB."
    )
    lease_seconds: float = Field(
        30.0, gt=0, description="Prefill frees a request's KV blocks after this if decode never acks."
    )
    mooncake: MooncakeSpec | None = Field(
        None, description="Mooncake's transport and devices (backend mooncake; default tcp)."
    )


class SlaSpec(ApiModel):
    """Latency targets the planner sizes the pools for."""

    ttft_ms: float = Field(gt=0, description="Time-to-first-token target, milliseconds.")
    itl_ms: float = Field(gt=0, description="Inter-token latency target, milliseconds.")
    percentile: float = Field(
        90.0, gt=0, lt=100, description="Percentile the targets apply to, e.g. 90 for p90."
    )


class PlannerSpec(ApiModel):
    """The SLA planner. It keeps each pool within its minReplicas..maxReplicas bounds."""

    enabled: bool = Field(True, description="Let the planner scale the pools.")
    interval_seconds: float = Field(60.0, gt=0, description="Seconds between planning decisions.")
    predictor: Predictor = Field(
        Predictor.EMA, description="Load predictor: constant, ema, holt, kalman or arima."
    )
    gpu_budget_nodes: int | None = Field(
        None,
        gt=0,
        description="Most nodes both pools together may use (as nodes × gpusPerNode GPUs).",
    )
    cooldown_seconds: float = Field(
        120.0, ge=0, description="Least time between two scaling actions on the same pool."
    )
    max_step_groups: int = Field(
        2, gt=0, description="Most EP groups a pool may grow or shrink by in one decision."
    )
    capacity_margin_percent: float = Field(
        0.0,
        ge=0,
        le=100,
        description="Extra capacity the planner holds, in percent of the load it sizes for: room for "
        "rises faster than a group starts (a new group serves only after its start-up). 0 sizes for the "
        "forecast alone; traffic that jumps 20% within a start-up needs about 20.",
    )
    perf_model: PerfModelSource = Field(
        PerfModelSource.ROOFLINE, description="Performance model: roofline or profile."
    )
    profile_file: str | None = Field(
        None, min_length=1, description="Profile JSON written by `moeplane profile` (perfModel profile)."
    )
    layout_changes: LayoutChanges = Field(
        LayoutChanges.RECOMMEND,
        description="The planner searches each pool's EP layout for the observed load: recommend reports "
        "the cheapest in status and on the dashboard; apply also patches spec.prefill/spec.decode "
        "(expertParallel, redundantExperts, replicas) when it saves at least 10% of the GPUs.",
    )


class ServingSpec(ApiModel):
    """Serving limits: the batching of each rank, the longest request, the frontend's wait queue.

    Batching limits apply to each data-parallel rank, as vLLM's do to each engine."""

    max_num_batched_tokens: int = Field(
        8192,
        gt=0,
        description="Tokens one rank computes per step over all its sequences (the token budget); "
        "longer prompts are prefilled in chunks over several steps. At least maxNumSeqs.",
    )
    max_num_seqs: int = Field(256, gt=0, description="Sequences one rank runs at once.")
    max_model_len: int | None = Field(
        None,
        ge=2,
        description="Longest prompt + output, in tokens. Defaults to the model's maxPositionEmbeddings "
        "and may not exceed it; one rank's KV cache must hold it.",
    )
    max_queued_requests: int = Field(
        1024,
        ge=0,
        description="Requests the frontend holds in its first-in first-out wait queue while every "
        "group is busy; beyond it a request gets 503 at once (0: no queue).",
    )
    queue_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="Longest a request waits in the queue before a 503; at most requestTimeoutSeconds.",
    )
    request_timeout_seconds: float = Field(
        300.0, gt=0, description="Longest a request may take end to end, queueing included."
    )


class FrontendSpec(ApiModel):
    """The OpenAI-compatible frontend of the deployment."""

    replicas: int = Field(1, ge=1, description="Frontend pods.")
    image: str | None = Field(None, min_length=1, description="Container image; overrides spec.image.")
    resources: dict[str, Any] | None = Field(None, description="Kubernetes ResourceRequirements.")
    pod: PodOverrides | None = Field(None, description="Pod-template fields of the frontend's pods.")


class RolloutSpec(ApiModel):
    """How a pool moves to a new revision (an image or EP-layout change): one EP group at a time."""

    max_surge_groups: int = Field(
        1,
        ge=1,
        le=64,
        description="EP groups a pool may run above its replicas during a rollout: the operator adds "
        "this many new-revision groups, waits until they serve, drains and removes as many old ones, "
        "and repeats. The GPUs of these groups must be free for the rollout to proceed.",
    )


class MoEDeploymentSpec(ApiModel):
    """A mixture-of-experts model served by a prefill pool and a decode pool."""

    model: ModelSpec = Field(description="The model, its weights and tokenizer.")
    hardware: HardwareConfig = Field(description="GPU type and node shape.")
    image: str | None = Field(
        None, min_length=1, description="Default container image of workers and frontend."
    )
    prefill: PoolSpec = Field(description="The prefill pool.")
    decode: PoolSpec = Field(description="The decode pool.")
    eplb: EplbSpec = Field(default_factory=EplbSpec, description="Expert load balancing.")
    kv_transfer: KvTransferSpec = Field(
        default_factory=KvTransferSpec, description="KV-cache transfer from prefill to decode."
    )
    serving: ServingSpec = Field(
        default_factory=ServingSpec, description="Serving limits: batching, longest request, queueing."
    )
    sla: SlaSpec = Field(description="Latency targets.")
    planner: PlannerSpec = Field(default_factory=PlannerSpec, description="The SLA planner.")
    frontend: FrontendSpec = Field(default_factory=FrontendSpec, description="The frontend.")
    rollout: RolloutSpec = Field(
        default_factory=RolloutSpec, description="Rollouts: how many extra EP groups a pool may run."
    )

    def pool(self, role: Role) -> PoolSpec:
        return self.prefill if role is Role.PREFILL else self.decode


# ---- MoEPool: one per role, owned by the operator, scaled through /scale ------------------------


class MoEPoolSpec(ApiModel):
    """A pool of EP groups of one role. Replicas count EP groups (the scale subresource)."""

    role: Role = Field(description="prefill or decode.")
    deployment_name: str = Field(min_length=1, description="The owning MoEDeployment.")
    replicas: int = Field(ge=0, description="EP groups to run.")
    layout: GroupLayout = Field(description="The resolved shape of one EP group.")
    image: str | None = Field(None, min_length=1, description="Worker container image.")
    gpu_resource_name: str = Field(
        "nvidia.com/gpu", min_length=1, description="Extended resource name of one GPU."
    )
    rdma: RdmaSpec | None = Field(None, description="The deployment's spec.hardware.rdma.")
    resources: dict[str, Any] | None = Field(
        None, description="Kubernetes ResourceRequirements of the worker container."
    )
    node_selector: dict[str, str] | None = Field(None, description="Node selector of the pods.")
    tolerations: list[dict[str, Any]] | None = Field(None, description="Kubernetes tolerations.")
    affinity: dict[str, Any] | None = Field(None, description="Kubernetes affinity.")
    topology_key: str | None = Field(None, min_length=1, description="The pool's topologyKey.")
    pod: PoolPodOverrides | None = Field(None, description="Pod-template fields of the pool's pods.")
    storage: ModelStorage | None = Field(
        None, description="The model locations the pods mount (weights, tokenizer, Hugging Face cache)."
    )
    rollout: RolloutSpec = Field(
        default_factory=RolloutSpec, description="The deployment's spec.rollout."
    )
    eplb_load_file: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_LOAD_FILE_CHARS,
        description="The deployment's spec.eplb.loadFile when its mode is static: the pool computes "
        "its initial placement from it; a configmap://NAME/KEY is mounted into the pool's pods.",
    )

    @field_validator("eplb_load_file")
    @classmethod
    def _load_file_form(cls, value: str | None) -> str | None:
        return None if value is None else check_load_file(value)


class MoEPoolStatus(ApiModel):
    """Observed state of a pool; `replicas` and `selector` serve the scale subresource."""

    replicas: int = Field(
        0, ge=0, description="EP groups of the current revision (the scale subresource's count)."
    )
    ready_groups: int = Field(0, ge=0, description="EP groups with every worker ready, over all revisions.")
    ready_workers: int = Field(0, ge=0, description="Ready worker pods over all groups.")
    selector: str = Field("", description="Label selector of the pool's pods (for HPA/KEDA).")
    observed_generation: int | None = Field(None, ge=0, description="The spec generation observed.")
    placement_version: int | None = Field(
        None, ge=0, description="Version of the expert placement the pool serves with (EPLB store)."
    )
    balancedness: float | None = Field(
        None, ge=0, le=1, description="Mean/max per-GPU token load in the last EPLB window."
    )
    conditions: list[Condition] = Field(
        default_factory=list, description="Ready, Progressing, Degraded and Invalid."
    )


# ---- top-level objects ------------------------------------------------------------------------

GROUP = "moeplane.io"
VERSION = "v1alpha1"
API_VERSION: Final = "moeplane.io/v1alpha1"


class ObjectMeta(ApiModel):
    """The metadata fields moeplane reads; everything else Kubernetes sets is kept as is."""

    model_config = ConfigDict(extra="allow")

    name: str | None = None
    namespace: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    generation: int | None = None
    uid: str | None = None
    resource_version: str | None = None


class MoEDeployment(ApiModel):
    api_version: Literal["moeplane.io/v1alpha1"] = API_VERSION
    kind: Literal["MoEDeployment"] = "MoEDeployment"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: MoEDeploymentSpec
    status: MoEDeploymentStatus | None = None


class MoEPool(ApiModel):
    api_version: Literal["moeplane.io/v1alpha1"] = API_VERSION
    kind: Literal["MoEPool"] = "MoEPool"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: MoEPoolSpec
    status: MoEPoolStatus | None = None


def parse_deployment(obj: object, *, validate: bool = True) -> MoEDeployment:
    """A MoEDeployment from its wire form (a dict, as from YAML or the API server).

    Raises `SpecInvalid` listing every problem, each naming its field path: first the
    structural ones (types, ranges, enums, unknown fields); when there are none, the
    cross-field rules of `validation.py` (skipped with `validate=False`). Never raises anything
    else for bad input.
    """
    deployment = _parse(MoEDeployment, obj)
    if validate:
        # Imported here because validation.py builds on these models.
        from moeplane.api.validation import check_spec

        check_spec(deployment.spec)
    return deployment


def parse_pool(obj: object) -> MoEPool:
    """A MoEPool from its wire form; raises `SpecInvalid` on structural problems."""
    return _parse(MoEPool, obj)


_M = TypeVar("_M", bound=ApiModel)


def _parse(model: type[_M], obj: object) -> _M:
    if not isinstance(obj, dict):
        raise SpecInvalid([Problem("(document)", f"must be a mapping, got {type(obj).__name__}")])
    try:
        return model.model_validate(obj)
    except ValidationError as err:
        raise SpecInvalid([pydantic_problem(e) for e in err.errors()]) from None
