"""`moeplane pool`, the Ray head's entrypoint of a Kubernetes pool: its settings come from the files
the operator builds (engine.json and the MoEPool's layout, made here by the operator's own builders), and
`PoolRunner` starts real groups on Ray, registers them in a real Redis, scales them down and
deregisters them.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import pytest
from moeplane.api.enums import Role
from moeplane.api.hardware import HardwarePreset
from moeplane.api.runtime import resolve_runtime
from moeplane.operator.builders.configmaps import engine_json
from moeplane.workers.embedded.plan import DEFAULT_MANIFEST, load_manifest
from moeplane.workers.placement import Placement
from moeplane.workers.pool.args import add_arguments
from moeplane.workers.pool.main import run, settings_from
from moeplane.workers.pool.plan import (
    PoolOptions,
    PoolPlanError,
    Reconcile,
    group_spec,
    groups_that_fit,
    reconcile,
)
from moeplane.workers.pool.runner import PoolRunner
from moeplane.workers.pool.settings import PoolSetupError, load_pool_settings
from moeplane.workers.serving.client import WorkerControlClient
from moeplane.workers.serving.sequence import SamplingParams

from moeplane.bus.keys import DeploymentKeys
from moeplane.bus.redis_client import async_redis
from moeplane.bus.registry import WorkerRegistry


def write_config(tmp_path: Path, namespace: str = "ns1") -> dict[str, str]:
    """The pod's environment, with the engine ConfigMap the operator would mount for the tiny
    manifest and the prefill MoEPool's layout."""
    document = resolve_runtime(load_manifest(DEFAULT_MANIFEST), namespace=namespace)
    engine = tmp_path / "engine.json"
    engine.write_text(engine_json(document))
    return {
        "MOEPLANE_ENGINE_CONFIG": str(engine),
        "MOEPLANE_POOL_LAYOUT": json.dumps(document.pool(Role.PREFILL).to_wire()),
        "MOEPLANE_ROLE": "prefill",
        "MOEPLANE_POOL": "tiny-prefill",
        "MOEPLANE_REVISION": "abcd1234",
        "MOEPLANE_REDIS_URL": "redis://127.0.0.1:1/0",
        "MOEPLANE_GRPC_TOKEN": "s3cret",
    }


@pytest.mark.unit
def test_settings_from_the_operators_configmaps(tmp_path: Path) -> None:
    s = load_pool_settings(write_config(tmp_path))
    assert (s.keys, s.role, s.served_model, s.weights, s.device) == (
        DeploymentKeys("ns1", "tiny"), Role.PREFILL, "tiny", 0, "cpu"
    )
    assert s.ep_size == 2 and s.group.expert_slots == 20
    identity = Placement.identity(3, 16, 20)  # tiny: 3 MoE layers, 16 experts, 4 redundant slots
    assert s.placement is not None and s.placement.phy2log.equal(identity.phy2log)
    assert s.group_id(1) == "tiny-prefill-abcd1234-g1"
    assert (s.kv_chunk_bytes, s.lease_s, s.grpc_token) == (262144, 10.0, "s3cret")
    spec = group_spec(s, PoolOptions(cpus_per_rank=0.5, max_kv_blocks_per_rank=64), 1)
    assert (spec.group_id, spec.ep_size, spec.num_cpus_per_rank) == ("tiny-prefill-abcd1234-g1", 2, 0.5)
    assert spec.rank.engine.num_blocks == 64 and spec.rank.security.token == "s3cret"
    assert spec.rank.placement is s.placement
    assert spec.eplb is not None and spec.eplb.mode.value == "online"  # the manifest's spec.eplb
    assert spec.eplb.balance.num_gpus == 2 and spec.eplb.keys == s.keys


@pytest.mark.unit
def test_flags_override_the_environment(tmp_path: Path) -> None:
    env = write_config(tmp_path)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--pool", "other", "--redis-url", "redis://10.0.0.1:6379/0"])
    s = settings_from(args, env)
    assert s.pool_name == "other" and s.redis_url == "redis://10.0.0.1:6379/0"
    # The layout in the environment is the prefill MoEPool's: it cannot run as the decode pool.
    with pytest.raises(PoolSetupError, match=r"^MOEPLANE_POOL_LAYOUT: role: is prefill: the layout of "
                                             r"another pool$"):
        settings_from(parser.parse_args(["--role", "decode"]), env)


@pytest.mark.unit
def test_bad_configuration_names_what_is_wrong(tmp_path: Path) -> None:
    env = write_config(tmp_path)
    with pytest.raises(PoolSetupError, match="MOEPLANE_REDIS_URL is not set"):
        load_pool_settings({**env, "MOEPLANE_REDIS_URL": ""})
    with pytest.raises(PoolSetupError, match="MOEPLANE_ROLE is 'both'"):
        load_pool_settings({**env, "MOEPLANE_ROLE": "both"})
    doc = json.loads(Path(env["MOEPLANE_ENGINE_CONFIG"]).read_text())
    doc["model"]["weights"] = {"format": "safetensors", "uri": "s3://bucket/DeepSeek-R1"}
    Path(env["MOEPLANE_ENGINE_CONFIG"]).write_text(json.dumps(doc))
    with pytest.raises(PoolSetupError, match=r"^engine config \S+engine\.json: model\.weights\.uri: "
                                             r"s3://bucket/DeepSeek-R1: the scheme s3:// is not supported"):
        load_pool_settings(env)
    env = write_config(tmp_path)
    with pytest.raises(PoolSetupError, match=r"^engine config \S+: pools\.prefill: is required: the prefill "
                                             r"pool's layout comes from MOEPLANE_POOL_LAYOUT"):
        load_pool_settings({**env, "MOEPLANE_POOL_LAYOUT": ""})
    with pytest.raises(PoolPlanError, match="heartbeat_s"):
        PoolOptions(heartbeat_s=5.0, registry_ttl_s=5.0)


@pytest.mark.unit
def test_groups_follow_the_clusters_capacity(tmp_path: Path) -> None:
    s = load_pool_settings(write_config(tmp_path))
    head = {"CPU": 0.0, "memory": 1e9}
    nodes = [head, {"CPU": 2.0}, {"CPU": 2.0}, {"CPU": 1.0}]
    assert groups_that_fit(nodes, s, PoolOptions(cpus_per_rank=1.0)) == 2  # 5 CPUs, 2 per group
    assert groups_that_fit(nodes, s, PoolOptions(cpus_per_rank=0.25)) == 10
    on_gpus = s.group.model_copy(update={"gpu": HardwarePreset.H100})
    gpu = replace(s, document=s.document.model_copy(update={"pools": {Role.PREFILL: on_gpus}}))
    assert gpu.device == "cuda"
    assert groups_that_fit([{"GPU": 8.0, "CPU": 64.0}] * 3, gpu, PoolOptions()) == 12
    assert groups_that_fit([head], gpu, PoolOptions()) == 0

    assert reconcile(3, [], []) == Reconcile(start=(0, 1, 2), stop=())
    up = reconcile(3, [0, 1], [])
    assert (up.start, up.stop) == ((2,), ())
    down = reconcile(1, [0, 1, 2], [])
    assert (down.start, down.stop) == ((), (1, 2))
    heal = reconcile(2, [0, 1], [0])
    assert (heal.start, heal.stop) == ((0,), (0,))
    gone = reconcile(1, [0, 1], [1])
    assert (gone.start, gone.stop) == ((), (1,))


@pytest.mark.integration
async def test_runner_starts_registers_scales_down_and_deregisters(
    tmp_path: Path, redis_server, ray_local
) -> None:
    env = {**write_config(tmp_path, namespace="pooltest"), "MOEPLANE_REDIS_URL": redis_server.url}
    settings = load_pool_settings(env)
    opts = PoolOptions(groups=1, cpus_per_rank=0.25, max_kv_blocks_per_rank=64, heartbeat_s=0.2,
                       registry_ttl_s=2.0)
    runner = await PoolRunner(settings, opts).start()
    registry = WorkerRegistry(async_redis(redis_server.url), settings.keys)
    try:
        await runner.reconcile_once()
        assert list(runner.groups) == [0]
        group = runner.groups[0]
        assert await group.beat.beat_once()
        live = await registry.live_groups()
        assert [(g.group_id, g.role.value, g.address) for g in live] == [
            ("tiny-prefill-abcd1234-g0", "prefill", group.address)
        ]
        # Through the registered address, with the shared token, the group serves.
        client = WorkerControlClient(live[0].address, settings.security)
        first = await client.prefill("pool-r1", [5, 6, 7, 8], SamplingParams(temperature=0.0, max_tokens=1))
        assert first.finish_reason is not None and 0 <= first.first_token_id < settings.arch.vocab_size
        await client.close()

        await runner.reconcile_once()  # steady state: nothing changes
        assert runner.groups == {0: group}

        runner.options = replace(opts, groups=0)  # the operator scaled the pool down
        await runner.reconcile_once()
        assert runner.groups == {}
        assert await registry.live_groups() == []
    finally:
        await runner.stop()
        await registry.client.aclose()


@pytest.mark.unit
def test_command_exits_1_naming_the_missing_variable(monkeypatch, capsys) -> None:
    for var in ("MOEPLANE_ENGINE_CONFIG", "MOEPLANE_REDIS_URL", "MOEPLANE_ROLE"):
        monkeypatch.delenv(var, raising=False)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args(["--role", "prefill"])) == 1
    assert "MOEPLANE_ENGINE_CONFIG is not set or pass --engine-config" in capsys.readouterr().err
