"""Locations -> checkpoint directories: local paths, PVC mounts and hf:// from an offline cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from moeplane.api.hf_config import read_hf_config
from moeplane.workers.model import EPModelRunner, SafetensorsWeights, prefill_metadata
from moeplane.workers.model.checkpoint import CheckpointError, resolve_checkpoint

pytestmark = pytest.mark.unit

REV = "0123456789abcdef0123456789abcdef01234567"


def _cache(home: Path, repo: str, checkpoint: Path) -> Path:
    """The huggingface_hub cache layout: models--ORG--REPO/snapshots/<rev>/ and refs/main."""
    root = home / "hub" / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / REV
    shutil.copytree(checkpoint, snapshot)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(REV)
    return snapshot


def test_hf_location_loads_from_the_offline_cache(hf_checkpoint, tmp_path: Path) -> None:
    snapshot = _cache(tmp_path, "tiny-org/tiny-qwen3", hf_checkpoint("qwen3-moe"))
    env = {"HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    path = resolve_checkpoint("hf://tiny-org/tiny-qwen3", env)
    assert path == snapshot
    assert resolve_checkpoint(f"hf://tiny-org/tiny-qwen3@{REV}", env) == snapshot
    arch = read_hf_config(path).arch
    runner = EPModelRunner(arch, SafetensorsWeights(path))
    logits = runner.forward(torch.tensor([1, 2, 3]), prefill_metadata([3]))
    assert logits.shape == (1, arch.vocab_size)


def test_an_offline_cache_miss_names_the_repo_and_how_to_fill_the_cache(tmp_path: Path) -> None:
    env = {"HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    with pytest.raises(CheckpointError) as err:
        resolve_checkpoint("hf://deepseek-ai/DeepSeek-V3", env)
    message = str(err.value)
    assert message.startswith(
        "hf://deepseek-ai/DeepSeek-V3: deepseek-ai/DeepSeek-V3 (revision main) is not in"
    )
    assert "HF_HUB_OFFLINE is set" in message
    assert f"HF_HOME={tmp_path} huggingface-cli download deepseek-ai/DeepSeek-V3" in message


def test_local_and_pvc_locations(hf_checkpoint, tmp_path: Path) -> None:
    local = hf_checkpoint("deepseek-v3")
    assert resolve_checkpoint(str(local)) == local
    assert resolve_checkpoint(f"file://{local}") == local
    mounted = tmp_path / "pvc" / "models" / "ds"
    shutil.copytree(local, mounted)
    env = {"MOEPLANE_VOLUME_ROOT": str(tmp_path)}
    assert resolve_checkpoint("pvc://models/ds", env) == mounted
    with pytest.raises(CheckpointError, match=r"^pvc://models/nope: .*/pvc/models/nope does not exist"):
        resolve_checkpoint("pvc://models/nope", env)
    with pytest.raises(CheckpointError, match=r"^/no/such/dir: /no/such/dir does not exist"):
        resolve_checkpoint("/no/such/dir")
    with pytest.raises(CheckpointError, match=r"s3:// is not supported"):
        resolve_checkpoint("s3://bucket/model")
