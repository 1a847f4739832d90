"""The runtime document: what a deployment's processes need to serve, resolved once from its spec.

`resolve_runtime(deployment)` (pure) turns a MoEDeployment into an `EngineDocument`: the model
(architecture, weights, tokenizer, served name), the serving limits, each pool's group layout
(with its GPU kind and KV capacity), EPLB, the KV transfer and the Redis keys' deployment. It is
the one spec → runtime path:

- the operator writes it, in its wire form, as the deployment's `engine.json` ConfigMap
  (`operator/builders/configmaps.py`). Each pool's layout travels with its MoEPool instead
  (`spec.layout`, which also shapes the pool's pods), and reaches its `moeplane pool` in
  `MOEPLANE_POOL_LAYOUT` (`api/podcontract.py`), so a pool's pods and its runtime read one value;
- `moeplane pool` and `moeplane frontend` read it with `read_engine_document` (`runtime_io.py`);
- `moeplane up` resolves the same document in memory, holds it to the same checks
  (`runtime_io.check_engine_document`) and plans its groups from it.

Every default is the spec models' (`spec.py`); the document states resolved values only, so a
reader never restates one. Fields are snake_case here and camelCase on the wire (`ApiModel`).
The rules a reader applies to a document live in `runtime_rules.py`, which `moeplane validate`
applies to the resolved spec too.
"""

from __future__ import annotations

from typing import Final, Literal

from moeplane.api.arch import ModelArch
from moeplane.api.base import ApiModel
from moeplane.api.enums import Role, WeightsFormat
from moeplane.api.layout import GroupLayout, resolve_group
from moeplane.api.spec import (
    API_VERSION,
    EplbSpec,
    KvTransferSpec,
    MoEDeployment,
    MoEDeploymentSpec,
    ServingSpec,
    WeightsSpec,
)
from pydantic import Field

BLOCK_SIZE_TOKENS: Final = 16  # tokens per KV-cache block, on every rank of every pool
BYTE_TOKENIZER: Final = "bytes"  # the built-in byte-level tokenizer (the tiny preset's)
DEFAULT_NAMESPACE: Final = "default"


class ModelRuntime(ApiModel):
    """The model every process of the deployment serves."""

    architecture: ModelArch = Field(description="The resolved architecture (a preset's, or the spec's).")
    weights: WeightsSpec = Field(description="Where the weights come from (spec.model.weights).")
    tokenizer: str = Field(
        min_length=1,
        description="`bytes`, or the tokenizer's location in the forms of weights.uri (spec.model."
        "tokenizer, else the weights' location).",
    )
    served_model_name: str = Field(
        min_length=1, description="The model's name on the OpenAI API (spec.model.servedModelName, "
        "else the deployment's name)."
    )


class ServingRuntime(ServingSpec):
    """spec.serving with `maxModelLen` resolved, and the KV-cache block size."""

    max_model_len: int = Field(  # type: ignore[assignment]  # resolved: never None here
        gt=0, description="Longest prompt + output, in tokens (at least 2: `runtime_rules`)."
    )
    block_size_tokens: int = Field(BLOCK_SIZE_TOKENS, gt=0, description="Tokens per KV-cache block.")


class EngineDocument(ApiModel):
    """The runtime document of one deployment (`engine.json`)."""

    api_version: Literal["moeplane.io/v1alpha1"] = API_VERSION
    kind: Literal["EngineDocument"] = "EngineDocument"
    deployment: str = Field(min_length=1, description="The MoEDeployment's name (the Redis keys' prefix).")
    namespace: str = Field(min_length=1, description="Its namespace.")
    model: ModelRuntime
    serving: ServingRuntime
    pools: dict[Role, GroupLayout] = Field(
        default_factory=dict,
        description="Each pool's EP-group layout. Empty in Kubernetes' engine.json: there each MoEPool "
        "carries its own (spec.layout) and its pods get it in MOEPLANE_POOL_LAYOUT.",
    )
    eplb: EplbSpec
    kv_transfer: KvTransferSpec

    def pool(self, role: Role) -> GroupLayout:
        """The layout of pool `role`; KeyError when the document does not carry it."""
        return self.pools[role]

    def without_pools(self) -> EngineDocument:
        """The deployment-wide part, as the operator's engine ConfigMap holds it."""
        return self.model_copy(update={"pools": {}})


def kv_blocks_per_rank(layout: GroupLayout, block_size_tokens: int) -> int:
    """KV-cache blocks one rank of `layout` holds: its KV tokens in whole blocks (at least one)."""
    return max(1, layout.kv_tokens_per_gpu // block_size_tokens)


def default_tokenizer(weights: WeightsSpec) -> str:
    """The tokenizer when the spec names none: the checkpoint's own, else the byte-level one."""
    if weights.format is WeightsFormat.SAFETENSORS and weights.uri is not None:
        return weights.uri
    return BYTE_TOKENIZER


def resolve_document(spec: MoEDeploymentSpec, name: str, namespace: str) -> EngineDocument:
    """The runtime document of `spec` deployed as `namespace/name`.

    Pure, and it checks nothing: a spec that breaks a rule resolves to a document that breaks it
    too (`runtime_rules.runtime_problems` says so). ValueError only when the model does not
    resolve (neither or both of preset and architecture), which validation reports first.
    """
    arch = spec.model.resolve_arch()
    hw = spec.hardware.figures()
    serving = ServingRuntime(
        **spec.serving.model_dump(exclude={"max_model_len"}),
        max_model_len=spec.serving.max_model_len or arch.max_position_embeddings,
    )
    model = ModelRuntime(
        architecture=arch,
        weights=spec.model.weights,
        tokenizer=spec.model.tokenizer or default_tokenizer(spec.model.weights),
        served_model_name=spec.model.served_model_name or name,
    )
    return EngineDocument(
        deployment=name,
        namespace=namespace,
        model=model,
        serving=serving,
        pools={role: resolve_group(arch, hw, spec.pool(role), role) for role in Role},
        eplb=spec.eplb,
        kv_transfer=spec.kv_transfer,
    )


def resolve_runtime(deployment: MoEDeployment, *, namespace: str | None = None) -> EngineDocument:
    """The runtime document of `deployment` (see `resolve_document`).

    Its name is `metadata.name` (else, for a manifest run without a cluster, the architecture's
    name); its namespace `namespace`, else `metadata.namespace`, else `default`.
    """
    spec = deployment.spec
    name = deployment.metadata.name or spec.model.resolve_arch().name
    ns = namespace or deployment.metadata.namespace or DEFAULT_NAMESPACE
    return resolve_document(spec, name, ns)
