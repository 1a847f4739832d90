"""Static EPLB in a Kubernetes pool: the pod the operator builds (its ConfigMaps written where the
kubelet would mount them, its plain env values) makes `moeplane pool` start on the load file's
placement, the same one the embedded stack computes; a bad or missing file stops it with exit 1
and a message naming the path. No cluster, no Ray.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from moeplane.api.enums import EplbAlgorithm, EplbMode, Role
from moeplane.api.runtime import resolve_runtime
from moeplane.api.spec import parse_deployment, parse_pool
from moeplane.operator.builders.configmaps import build_engine_configmap
from moeplane.operator.builders.pools import build_pool
from moeplane.operator.builders.raycluster import POOL_CONTAINER, build_raycluster
from moeplane.operator.config import OperatorConfig
from moeplane.workers.embedded.plan import DEFAULT_MANIFEST, EmbeddedPlanError, plan_from_deployment
from moeplane.workers.eplb.static import model_static_placement, static_placement
from moeplane.workers.eplb.types import EplbError
from moeplane.workers.placement import Placement
from moeplane.workers.pool.args import add_arguments
from moeplane.workers.pool.main import run
from moeplane.workers.pool.plan import PoolOptions, group_spec
from moeplane.workers.pool.settings import PoolSetupError, load_pool_settings

pytestmark = pytest.mark.unit

NAMESPACE = "ns1"
LOAD_CONFIGMAP = "tiny-expert-load"
LOAD_KEY = "prefill-load.json"


def manifest(**eplb: Any) -> dict[str, Any]:
    raw = yaml.safe_load(DEFAULT_MANIFEST.read_text())
    raw["spec"]["eplb"] = {**raw["spec"]["eplb"], **eplb}
    return raw


def skewed_load(hot: tuple[int, ...] = (4, 5, 6)) -> torch.Tensor:
    """[3 MoE layers, 16 experts] of the tiny model, a few experts far hotter than the rest."""
    load = torch.ones(3, 16, dtype=torch.float64)
    load[:, list(hot)] = 50.0
    return load


def operator_pod(tmp_path: Path, raw: dict[str, Any], load_doc: str | None) -> dict[str, str]:
    """The prefill head's `moeplane pool` environment as the operator builds it, with every
    ConfigMap volume of the head pod written under `tmp_path` the way the kubelet mounts it
    (`load_doc` is the content of the user's load ConfigMap key; None: the key is absent)."""
    dep = parse_deployment(raw)
    document = resolve_runtime(dep, namespace=NAMESPACE)
    name = str(dep.metadata.name)
    pool = build_pool(dep, name, NAMESPACE, Role.PREFILL, document.pool(Role.PREFILL), 1)
    spec, pool_name = parse_pool(pool).spec, str(pool["metadata"]["name"])
    rc = build_raycluster(spec, pool_name, NAMESPACE, spec.layout.gpu, OperatorConfig())
    engine = build_engine_configmap(document)
    configmaps = {engine["metadata"]["name"]: engine["data"]}
    configmaps[LOAD_CONFIGMAP] = {} if load_doc is None else {LOAD_KEY: load_doc}
    head = rc["spec"]["headGroupSpec"]["template"]["spec"]
    sidecar = next(c for c in head["containers"] if c["name"] == POOL_CONTAINER)
    root = tmp_path / "pod"

    def local(path: str) -> Path:
        return root / path.lstrip("/")

    volumes = {v["name"]: v for v in head["volumes"]}
    for mount in sidecar["volumeMounts"]:
        source = volumes[mount["name"]].get("configMap")
        if source is None:
            continue
        data = configmaps[source["name"]]
        items = source.get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            if item["key"] in data:  # the kubelet would hold the pod instead; the pool must say so too
                target = local(mount["mountPath"]) / item["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(data[item["key"]])
    env = {
        e["name"]: str(local(e["value"])) if e["value"].startswith("/etc/") else e["value"]
        for e in sidecar["env"]
        if "value" in e
    }
    return {**env, "MOEPLANE_REDIS_URL": "redis://127.0.0.1:1/0"}


def test_a_configmap_load_file_gives_the_static_placement(tmp_path: Path) -> None:
    load = skewed_load()
    raw = manifest(mode="static", loadFile=f"configmap://{LOAD_CONFIGMAP}/{LOAD_KEY}")
    env = operator_pod(tmp_path, raw, json.dumps({"load": load.tolist()}))
    path = env["MOEPLANE_EPLB_LOAD_FILE"]
    assert path.endswith(f"/etc/moeplane/eplb-load/{LOAD_KEY}") and Path(path).is_file()

    s = load_pool_settings(env)
    arch = s.arch
    expected = static_placement(
        path, 20, arch.n_group, 1, 2, EplbAlgorithm.AUTO,
        num_layers=arch.num_moe_layers, num_logical=arch.num_routed_experts,
    )
    assert s.placement is not None and s.placement.version == 0
    assert torch.equal(s.placement.phy2log, expected.phy2log)
    identity = Placement.identity(arch.num_moe_layers, arch.num_routed_experts, 20)
    assert not torch.equal(s.placement.phy2log, identity.phy2log), "the identity placement is replaced"
    assert bool((s.placement.logcnt[:, [4, 5, 6]] >= 2).all()), "the hot experts get the redundant slots"
    spec = group_spec(s, PoolOptions(cpus_per_rank=0.5), 0)
    assert spec.rank.placement is s.placement
    assert spec.eplb is not None and spec.eplb.mode is EplbMode.STATIC


def test_a_path_load_file_gives_the_embedded_stacks_placement(tmp_path: Path) -> None:
    load = skewed_load(hot=(0, 9))
    torch.save({"load": load}, tmp_path / "load.pt")
    raw = manifest(mode="static", loadFile=str(tmp_path / "load.pt"), algorithm="global")
    env = operator_pod(tmp_path, raw, None)
    assert env["MOEPLANE_EPLB_LOAD_FILE"] == str(tmp_path / "load.pt")
    pool = load_pool_settings(env).placement
    embedded = plan_from_deployment(parse_deployment(raw)).prefill.placement
    assert pool is not None and embedded is not None
    assert torch.equal(pool.phy2log, embedded.phy2log)
    arch = parse_deployment(raw).spec.model.resolve_arch()
    same = model_static_placement(tmp_path / "load.pt", arch, 20, 1, 2, EplbAlgorithm.GLOBAL)
    assert torch.equal(pool.phy2log, same.phy2log)


def test_the_embedded_stack_refuses_a_configmap_reference() -> None:
    raw = manifest(mode="static", loadFile="configmap://tiny-expert-load/load.json")
    with pytest.raises(EmbeddedPlanError, match=r"spec\.eplb\.loadFile: configmap://tiny-expert-load/"
                                                r"load\.json names a Kubernetes ConfigMap"):
        plan_from_deployment(parse_deployment(raw))


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, r"load file \S+/etc/moeplane/eplb-load/prefill-load\.json does not exist"),
        ("{not json", r"load file \S+prefill-load\.json is not valid JSON"),
        (json.dumps(torch.ones(3, 8).tolist()), r"load file \S+prefill-load\.json has 8 experts per layer, "
                                                r"the model has 16"),
        (json.dumps(torch.ones(5, 16).tolist()), r"has 5 layers, the model has 3 MoE layers"),
        (json.dumps({"load": [[-1.0] * 16] * 3}), r"load\[0, 0\] is -1\.0; loads must be >= 0"),
    ],
    ids=["missing-key", "bad-json", "wrong-experts", "wrong-layers", "negative"],
)
def test_a_bad_load_file_is_a_setup_error_naming_the_path(
    tmp_path: Path, content: str | None, problem: str
) -> None:
    raw = manifest(mode="static", loadFile=f"configmap://{LOAD_CONFIGMAP}/{LOAD_KEY}")
    env = operator_pod(tmp_path, raw, content)
    with pytest.raises(PoolSetupError, match=rf"^MOEPLANE_EPLB_LOAD_FILE: .*{problem}"):
        load_pool_settings(env)


def test_a_hand_edited_layout_is_refused_before_the_load_file_is_placed(tmp_path: Path) -> None:
    raw = manifest(mode="static", loadFile=f"configmap://{LOAD_CONFIGMAP}/{LOAD_KEY}")
    env = operator_pod(tmp_path, raw, json.dumps(skewed_load().tolist()))
    layout = json.loads(env["MOEPLANE_POOL_LAYOUT"])
    layout["nodesPerGroup"] = 3  # 2 ranks on 3 nodes: no pod shape the operator would make
    with pytest.raises(PoolSetupError, match=r"^MOEPLANE_POOL_LAYOUT: nodesPerGroup: is 3, expected 1 for "
                                             r"expertParallel 2 on 2 GPUs per node$"):
        load_pool_settings({**env, "MOEPLANE_POOL_LAYOUT": json.dumps(layout)})
    # Were it placed anyway, the algorithm itself would name the numbers.
    doc = resolve_runtime(parse_deployment(raw))
    bad = doc.model_copy(update={"pools": {Role.PREFILL: doc.pool(Role.PREFILL).model_copy(
        update={"nodes_per_group": 3})}})
    from moeplane.workers.runtime import initial_placement

    with pytest.raises(EplbError, match=r"num_gpus \(2\) must be a multiple of num_nodes \(3\)"):
        initial_placement(bad, Role.PREFILL, env["MOEPLANE_EPLB_LOAD_FILE"])


def test_a_configmap_reference_without_its_mount_is_a_setup_error(tmp_path: Path) -> None:
    raw = manifest(mode="static", loadFile=f"configmap://{LOAD_CONFIGMAP}/{LOAD_KEY}")
    env = operator_pod(tmp_path, raw, "[]")
    del env["MOEPLANE_EPLB_LOAD_FILE"]  # e.g. an older operator's pod
    with pytest.raises(PoolSetupError, match=r"eplb\.loadFile configmap://tiny-expert-load/prefill-load\.json"
                                             r" is a ConfigMap key, which the operator mounts .* "
                                             r"MOEPLANE_EPLB_LOAD_FILE; that variable is not set"):
        load_pool_settings(env)


def test_online_mode_starts_on_the_identity_placement(tmp_path: Path) -> None:
    env = operator_pod(tmp_path, manifest(mode="online"), None)
    assert "MOEPLANE_EPLB_LOAD_FILE" not in env
    s = load_pool_settings(env)
    identity = Placement.identity(s.arch.num_moe_layers, s.arch.num_routed_experts, 20)
    assert s.placement is not None and torch.equal(s.placement.phy2log, identity.phy2log)


def test_moeplane_pool_exits_1_with_the_message(tmp_path: Path, monkeypatch, capsys) -> None:
    raw = manifest(mode="static", loadFile=f"configmap://{LOAD_CONFIGMAP}/{LOAD_KEY}")
    for var, value in operator_pod(tmp_path, raw, None).items():
        monkeypatch.setenv(var, value)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    # Settings are read before Ray is joined: nothing listens at this address, and nothing is tried.
    assert run(parser.parse_args(["--ray-address", "127.0.0.1:9", "--ray-connect-timeout", "1"])) == 1
    err = capsys.readouterr().err
    assert "moeplane pool: MOEPLANE_EPLB_LOAD_FILE: load file " in err
    assert "/etc/moeplane/eplb-load/prefill-load.json does not exist" in err
