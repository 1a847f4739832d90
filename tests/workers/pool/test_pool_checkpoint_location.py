"""A pool whose runtime document names a checkpoint location: `moeplane pool` passes the location
itself to every rank (`RankSpec.weights`, `RankSpec.tokenizer`), and each rank resolves it on its
own node: pvc://CLAIM/PATH under that node's `MOEPLANE_VOLUME_ROOT`. Errors name the location."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from moeplane.api import podcontract as pc
from moeplane.api.enums import Role
from moeplane.operator.builders.configmaps import engine_json
from moeplane.workers.model import CheckpointError, HFTokenizer, SafetensorsWeights
from moeplane.workers.pool.plan import PoolOptions, group_spec
from moeplane.workers.pool.settings import load_pool_settings

from tests.example_manifests import PVC_LOCATION as LOCATION
from tests.example_manifests import pvc_document

pytestmark = pytest.mark.unit

def test_every_rank_gets_the_location_and_resolves_it_on_its_node(
    tmp_path: Path, hf_checkpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = hf_checkpoint("deepseek-v3")
    document = pvc_document(checkpoint)
    engine = tmp_path / "engine.json"
    engine.write_text(engine_json(document.without_pools()))
    env = {
        pc.ENGINE_CONFIG_ENV: str(engine), pc.REDIS_URL_ENV: "redis://127.0.0.1:1/0",
        pc.ROLE_ENV: "decode", pc.POOL_LAYOUT_ENV: json.dumps(document.pool(Role.DECODE).to_wire()),
    }
    settings = load_pool_settings(env)
    rank = group_spec(settings, PoolOptions(), 0).rank
    assert rank.weights == settings.weights == LOCATION and rank.tokenizer == LOCATION

    # The rank's node: the claim mounted under its volume root.
    root = tmp_path / "node"
    (root / "pvc" / "models" / "moe").mkdir(parents=True)
    (root / "pvc" / "models" / "moe" / "checkpoint").symlink_to(checkpoint)
    monkeypatch.setenv("MOEPLANE_VOLUME_ROOT", str(root))
    source = rank.weight_source()
    assert isinstance(source, SafetensorsWeights) and source.path == root / "pvc/models/moe/checkpoint"
    tokenizer = rank.load_tokenizer()
    assert isinstance(tokenizer, HFTokenizer) and tokenizer.directory == source.path

    monkeypatch.setenv("MOEPLANE_VOLUME_ROOT", str(tmp_path / "elsewhere"))
    missing = rf"^{LOCATION}: .* does not exist \(the claim 'models' is mounted"
    with pytest.raises(CheckpointError, match=missing):
        rank.weight_source()
