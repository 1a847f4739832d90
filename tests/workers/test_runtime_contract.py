"""One spec → runtime path: every example goes through the operator's builders (the engine ConfigMap,
the MoEPools, their RayClusters, the frontend Deployment) and then the readers that run in those
pods (`moeplane pool` for each role, `moeplane frontend`), and the CPU examples through
`moeplane up`'s plan too; each reads what the builders wrote, and they agree with the pods' shape:
every rank and the frontend load the document's weights and tokenizer. local-checkpoint.yaml's
placeholder directory is replaced by a checkpoint transformers built (`tests/example_manifests.py`).
A document with a bad field stops each reader with the field's path. No cluster, no Ray.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
from moeplane.api import podcontract as pc
from moeplane.api.enums import Role, WeightsFormat
from moeplane.api.hardware import HardwarePreset
from moeplane.api.runtime import EngineDocument, kv_blocks_per_rank, resolve_runtime
from moeplane.api.spec import MoEDeployment, parse_deployment, parse_pool
from moeplane.operator.builders.configmaps import build_engine_configmap
from moeplane.operator.builders.frontend import FRONTEND_CONTAINER, build_frontend_deployment
from moeplane.operator.builders.pools import build_pool
from moeplane.operator.builders.raycluster import POOL_CONTAINER, build_raycluster, gpus_per_pod
from moeplane.operator.config import OperatorConfig
from moeplane.workers.embedded.plan import plan_from_deployment
from moeplane.workers.frontend.main import (
    FrontendSetupError,
    frontend_config,
    frontend_tokenizer,
    load_settings,
)
from moeplane.workers.model import ByteTokenizer, HFTokenizer
from moeplane.workers.placement import Placement
from moeplane.workers.pool.args import add_arguments
from moeplane.workers.pool.main import run as run_pool
from moeplane.workers.pool.plan import PoolOptions, group_spec
from moeplane.workers.pool.settings import PoolSetupError, load_pool_settings

from tests.example_manifests import EXAMPLE_FILES, example_manifest

pytestmark = pytest.mark.unit

EXAMPLES = EXAMPLE_FILES
NAMESPACE = "llm"
CONFIG = OperatorConfig(redis_url="redis://moeplane-redis.moeplane:6379/0")
REDIS_URL = "redis://127.0.0.1:1/0"  # never dialled: reading settings opens no connection


def deployment(path: Path, checkpoint: Path | None = None) -> MoEDeployment:
    """An example; `checkpoint` replaces local-checkpoint.yaml's placeholder directory."""
    return parse_deployment(example_manifest(path, checkpoint))


def mount(engine_configmap: dict[str, Any], root: Path) -> Path:
    """The engine ConfigMap where the kubelet would mount it, under `root`."""
    target = root / pc.ENGINE_DIR.lstrip("/")
    target.mkdir(parents=True, exist_ok=True)
    for key, text in engine_configmap["data"].items():
        (target / key).write_text(text)
    return target / pc.ENGINE_KEY


def container_env(container: dict[str, Any], engine: Path) -> dict[str, str]:
    """A container's env as the process sees it: Secret references filled, engine.json's path moved."""
    refs = {pc.REDIS_URL_ENV: REDIS_URL, pc.GRPC_TOKEN_ENV: "token", pc.POD_IP_ENV: "10.1.2.3"}
    env = {var["name"]: var["value"] if "value" in var else refs[var["name"]] for var in container["env"]}
    assert env[pc.ENGINE_CONFIG_ENV] == pc.ENGINE_PATH
    env[pc.ENGINE_CONFIG_ENV] = str(engine)
    return env


def built(dep: MoEDeployment, tmp_path: Path) -> tuple[EngineDocument, Path, dict[Role, dict[str, Any]]]:
    """What the operator makes of `dep`: its document, the mounted engine.json, and per role the
    MoEPool and its RayCluster."""
    name = str(dep.metadata.name)
    document = resolve_runtime(dep, namespace=NAMESPACE)
    engine = mount(build_engine_configmap(document), tmp_path)
    children = {}
    for role in Role:
        pool = build_pool(dep, name, NAMESPACE, role, document.pool(role), dep.spec.pool(role).replicas)
        spec = parse_pool(pool).spec  # the MoEPool passes its own schema
        rc = build_raycluster(spec, pool["metadata"]["name"], NAMESPACE, spec.layout.gpu, CONFIG)
        children[role] = {"pool": spec, "raycluster": rc}
    return document, engine, children


def sidecar(rc: dict[str, Any]) -> dict[str, Any]:
    head = rc["spec"]["headGroupSpec"]["template"]["spec"]
    return next(c for c in head["containers"] if c["name"] == POOL_CONTAINER)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_reaches_every_reader_through_the_builders(
    tmp_path: Path, path: Path, hf_checkpoint
) -> None:
    dep = deployment(path, hf_checkpoint("deepseek-v3"))
    document, engine, children = built(dep, tmp_path)
    assert json.loads(engine.read_text())["pools"] == {}  # the layouts travel with the MoEPools

    for role, child in children.items():
        settings = load_pool_settings(container_env(sidecar(child["raycluster"]), engine))
        # The runtime runs the layout that shaped the pods, and nothing else.
        layout = child["pool"].layout
        assert settings.group == layout == document.pool(role)
        worker = child["raycluster"]["spec"]["workerGroupSpecs"][0]
        assert worker["numOfHosts"] * gpus_per_pod(child["pool"]) == settings.ep_size
        assert settings.device == ("cpu" if layout.gpu is HardwarePreset.CPU else "cuda")
        assert (settings.role, settings.served_model, settings.keys.prefix) == (
            role, document.model.served_model_name, f"moeplane:{NAMESPACE}/{dep.metadata.name}:"
        )
        arch = settings.arch
        identity = Placement.identity(arch.num_moe_layers, arch.num_routed_experts, layout.expert_slots)
        assert settings.placement.phy2log.equal(identity.phy2log)  # no placement ConfigMap
        spec = group_spec(settings, PoolOptions(), 0)
        engine_config = spec.rank.engine
        assert engine_config.block_size == document.serving.block_size_tokens
        assert engine_config.num_blocks == kv_blocks_per_rank(layout, engine_config.block_size)
        assert engine_config.scheduler.max_model_len == document.serving.max_model_len
        assert engine_config.scheduler.max_num_seqs == document.serving.max_num_seqs
        assert engine_config.lease_s == document.kv_transfer.lease_seconds
        assert spec.rank.kv_chunk_bytes == document.kv_transfer.chunk_bytes
        # Every rank loads the document's weights and tokenizer, resolving locations on its node.
        if document.model.weights.format is WeightsFormat.SAFETENSORS:
            assert spec.rank.weights == settings.weights == document.model.weights.uri
        else:
            assert spec.rank.weights == settings.weights == document.model.weights.seed
        assert spec.rank.tokenizer == document.model.tokenizer

    front = build_frontend_deployment(dep, str(dep.metadata.name), NAMESPACE, CONFIG)
    container = next(
        c for c in front["spec"]["template"]["spec"]["containers"] if c["name"] == FRONTEND_CONTAINER
    )
    env = container_env(container, engine)
    fe = load_settings(env[pc.ENGINE_CONFIG_ENV], env[pc.REDIS_URL_ENV], env[pc.GRPC_TOKEN_ENV])
    assert fe.document == document.without_pools()
    config = frontend_config(fe.document)
    assert (config.served_model, config.max_model_len, config.request_timeout_s) == (
        document.model.served_model_name, document.serving.max_model_len,
        document.serving.request_timeout_seconds,
    )
    random = document.model.weights.format is WeightsFormat.RANDOM
    assert config.model_root == (None if random else document.model.weights.uri)

    if dep.spec.hardware.gpu is HardwarePreset.CPU:  # here, the tokenizer's location is on this machine
        tokenizer = frontend_tokenizer(fe.document)  # the one every rank loads too
        assert isinstance(tokenizer, ByteTokenizer if random else HFTokenizer)
        plan = plan_from_deployment(dep)  # `moeplane up`: the same document, in memory
        assert plan.document == resolve_runtime(dep)
        assert (plan.weights, plan.tokenizer) == (spec.rank.weights, spec.rank.tokenizer)
        for role in Role:
            assert plan.pool(role).layout == document.pool(role)
            assert plan.pool(role).num_blocks_per_rank == kv_blocks_per_rank(
                document.pool(role), document.serving.block_size_tokens
            )


def broken(engine: Path, **changes: Any) -> None:
    """engine.json with dotted fields set."""
    doc = json.loads(engine.read_text())
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = doc
        for key in parents:
            node = node[key]
        node[leaf] = value
    engine.write_text(json.dumps(doc))


TINY = next(p for p in EXAMPLES if p.name == "tiny-cpu.yaml")


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"serving.maxNumSeqs": 0}, "serving.maxNumSeqs: must be greater than 0 (got 0)"),
        ({"kvTransfer.chunkBytes": 1}, "kvTransfer.chunkBytes: must be at least 262144 (got 1)"),
        ({"model.weights.uri": "s3://b/t"}, "model.weights.uri: s3://b/t: the scheme s3:// is not supported"),
        ({"eplb.mode": "dynamic"}, "eplb.mode: must be one of 'off', 'static' or 'online' (got 'dynamic')"),
        ({"serving.maxModelLen": 9999}, "serving.maxModelLen: 9999 exceeds the model's maxPosition"),
        ({"model.servedModelName": ""}, "model.servedModelName: must not be empty"),
    ],
    ids=["structure", "range", "location", "enum", "rule", "empty"],
)
def test_a_bad_field_stops_every_reader_naming_it(
    tmp_path: Path, changes: dict[str, Any], problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, engine, children = built(deployment(TINY), tmp_path)
    broken(engine, **changes)
    where = f"engine config {engine}: "
    env = container_env(sidecar(children[Role.DECODE]["raycluster"]), engine)
    with pytest.raises(PoolSetupError) as pool:
        load_pool_settings(env)
    assert str(pool.value).startswith(where) and problem in str(pool.value)
    with pytest.raises(FrontendSetupError) as front:
        load_settings(str(engine), REDIS_URL, None)
    assert str(front.value).startswith(where) and problem in str(front.value)


def test_a_bad_layout_in_the_pods_env_stops_moeplane_pool_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, engine, children = built(deployment(TINY), tmp_path)
    env = container_env(sidecar(children[Role.PREFILL]["raycluster"]), engine)
    layout = json.loads(env[pc.POOL_LAYOUT_ENV])
    env[pc.POOL_LAYOUT_ENV] = json.dumps({**layout, "attentionDpSize": 1, "attentionTpSize": 2})
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    # Settings are read before Ray is joined: nothing listens at this address, and nothing is tried.
    assert run_pool(parser.parse_args(["--ray-address", "127.0.0.1:9", "--ray-connect-timeout", "1"])) == 1
    assert capsys.readouterr().err.strip() == (
        "moeplane pool: MOEPLANE_POOL_LAYOUT: attentionDpSize: 1 must equal expertParallel (2): the workers "
        "run attention data-parallel on every GPU (attention tensor parallelism is not implemented); leave "
        "it unset"
    )
    del env[pc.POOL_LAYOUT_ENV]
    with pytest.raises(PoolSetupError, match=r"pools\.prefill: is required"):
        load_pool_settings(env)
    with pytest.raises(PoolSetupError, match=r"MOEPLANE_POOL_LAYOUT: gpu: is required"):
        load_pool_settings({**env, pc.POOL_LAYOUT_ENV: json.dumps({k: v for k, v in layout.items()
                                                                       if k != "gpu"})})
