"""`moeplane frontend` on a runtime document that names a checkpoint: it loads the tokenizer at the
document's `model.tokenizer` (here pvc://, resolved under its `MOEPLANE_VOLUME_ROOT`), as every rank
does, so /tokenize renders the checkpoint's chat template exactly as transformers; /v1/models'
`root` is the location. A location that is not there stops it with exit 1 naming the location."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from moeplane.operator.builders.configmaps import engine_json
from moeplane.workers.net import free_port

from tests.example_manifests import PVC_LOCATION as LOCATION
from tests.example_manifests import pvc_document

pytestmark = pytest.mark.integration

CHAT = [{"role": "user", "content": "Prefill or decode? 🙂"}]


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.load(resp)


def test_frontend_command_serves_the_checkpoints_tokenizer(
    tmp_path: Path, redis_server, hf_checkpoint
) -> None:
    from transformers import AutoTokenizer

    checkpoint = hf_checkpoint("qwen3-moe")
    engine = tmp_path / "engine.json"
    engine.write_text(engine_json(pvc_document(checkpoint).without_pools()))
    root = tmp_path / "volumes"
    (root / "pvc" / "models" / "moe").mkdir(parents=True)
    (root / "pvc" / "models" / "moe" / "checkpoint").symlink_to(checkpoint)
    env = {**os.environ, "MOEPLANE_ENGINE_CONFIG": str(engine), "MOEPLANE_REDIS_URL": redis_server.url,
           "MOEPLANE_VOLUME_ROOT": str(root), "PYTHONUNBUFFERED": "1"}

    missing = subprocess.run(
        [sys.executable, "-m", "moeplane", "frontend", "--port", "0"], capture_output=True, text=True,
        timeout=120, env={**env, "MOEPLANE_VOLUME_ROOT": str(tmp_path / "nowhere")},
    )
    assert missing.returncode == 1
    assert missing.stderr.startswith(
        f"moeplane frontend: cannot load the tokenizer (model.tokenizer {LOCATION}): {LOCATION}: "
    ), missing.stderr
    assert "does not exist" in missing.stderr

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moeplane", "frontend", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert f"on http://127.0.0.1:{port}/v1" in first, first
        url = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(url + "/v1/models", timeout=10) as resp:
            card = json.load(resp)["data"][0]
        assert (card["root"], card["max_model_len"]) == (LOCATION, 512)
        reference = AutoTokenizer.from_pretrained(checkpoint)
        chat = reference.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True,
                                             return_dict=False)
        assert _post(url + "/tokenize", {"messages": CHAT})["tokens"] == chat
        text = "héllo wörld"
        assert _post(url + "/tokenize", {"prompt": text})["tokens"] == reference(text).input_ids
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and "moeplane frontend: stopped" in out
