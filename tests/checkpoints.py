"""Small real Hugging Face checkpoints, built by `transformers` itself, for tests at every level.

`build_checkpoint(kind, directory)` writes what a user downloads from the Hub, at toy size: a
random `DeepseekV3ForCausalLM` or `Qwen3MoeForCausalLM` saved by `save_pretrained` as sharded
safetensors with an index (fp32, nonzero `e_score_correction_bias`, perturbed norms), a byte-level
BPE tokenizer trained here with `tokenizers` (tokenizer.json + tokenizer_config.json with special
tokens and a chat template), and generation_config.json. `quantize_fp8(src, dst)` turns one into a
DeepSeek-style FP8 block-quantised checkpoint. The end-to-end tests import these too.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

KINDS = ("deepseek-v3", "deepseek-v3-noq", "qwen3-moe")
TOKENIZER_VOCAB = 384  # trained BPE size, special tokens included
MODEL_VOCAB = 400  # model rows (> tokenizer size, as real releases pad)
SPECIAL_TOKENS = ["<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
CHAT_TEMPLATE = (
    "{% if add_bos is not defined or add_bos %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}\n"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Conversation roles must be system, user or assistant, got ' + message['role']) }}"
    "{% endif %}\n"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}\n"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
    "{% if meta is defined %}{{ meta | tojson }}{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Mixture-of-experts models route each token to a few experts; expert parallelism spreads them.",
    "Prefill and decode run on separate pools, and the KV cache moves between them.",
    "héllo wörld, ça va? naïve façade — “quotes” and ‘single’ ones… 1234567890",
    "日本語のテキスト、中文文本，한국어 텍스트. Ελληνικά και русский текст.",
    "emoji: 🙂🚀🎉👩‍💻 🇫🇷 ✨ and more 🤖🧠",
    "def forward(self, x):\n    return self.linear(x)  # code\n\ttabs\tand  spaces",
]


@dataclass(frozen=True)
class Built:
    """A built checkpoint: its directory and the transformers config it was made from."""

    path: Path
    kind: str


def _train_tokenizer(directory: Path, template_in_file: bool, add_bos: bool) -> dict[str, int]:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    if add_bos:  # as DeepSeek's tokenizer.json: BOS through a TemplateProcessing step
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1",
                                          special_tokens=[("<s>", ids["<s>"])]),
        ])
    tok.save(str(directory / "tokenizer.json"))
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "<|im_end|>",
        "pad_token": "<pad>",
        "unk_token": None,
        "add_bos_token": add_bos,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 4096,
        "added_tokens_decoder": {
            str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                     "single_word": False, "special": True}
            for t, i in ids.items()
        },
    }
    if template_in_file:
        (directory / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    else:
        config["chat_template"] = CHAT_TEMPLATE
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=1, ensure_ascii=False))
    return ids


def _hf_config(kind: str, ids: dict[str, int]) -> Any:
    from transformers import DeepseekV3Config, Qwen3MoeConfig

    common = dict(
        vocab_size=MODEL_VOCAB, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
        num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=512, rms_norm_eps=1e-6,
        initializer_range=0.1, bos_token_id=ids["<s>"], eos_token_id=ids["<|im_end|>"],
    )
    if kind.startswith("deepseek"):
        noq = kind == "deepseek-v3-noq"
        return DeepseekV3Config(
            **common, num_key_value_heads=4, n_shared_experts=1, n_routed_experts=8,
            routed_scaling_factor=2.5, kv_lora_rank=16, q_lora_rank=None if noq else 24,
            qk_rope_head_dim=8, v_head_dim=16, qk_nope_head_dim=8, n_group=4, topk_group=2,
            num_experts_per_tok=3, first_k_dense_replace=1, norm_topk_prob=True,
            attention_bias=noq, rope_interleave=not noq, tie_word_embeddings=noq,
            rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128,
                          "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 0.8},
            rope_theta=10000.0, num_nextn_predict_layers=0,
        )
    return Qwen3MoeConfig(
        **common, num_key_value_heads=2, head_dim=16, num_experts=8, num_experts_per_tok=2,
        norm_topk_prob=True, mlp_only_layers=[1], decoder_sparse_step=1, attention_bias=False,
        rope_scaling={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 256},
        rope_theta=1000000.0, tie_word_embeddings=False,
    )


def build_checkpoint(kind: str, directory: str | Path, seed: int = 0) -> Built:
    """Write a `kind` checkpoint (one of KINDS) into `directory` and return it."""
    from transformers import DeepseekV3ForCausalLM, GenerationConfig, Qwen3MoeForCausalLM

    if kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; one of {KINDS}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ids = _train_tokenizer(directory, template_in_file=kind == "deepseek-v3", add_bos=kind == "deepseek-v3")
    config = _hf_config(kind, ids)
    torch.manual_seed(seed)
    cls = DeepseekV3ForCausalLM if kind.startswith("deepseek") else Qwen3MoeForCausalLM
    model = cls(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.add_(0.1 * torch.randn_like(param))
            elif name.endswith(".bias"):
                param.copy_(0.1 * torch.randn_like(param))
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_(0.05 * torch.randn_like(buf))  # nonzero: it must steer routing
    model.save_pretrained(directory, max_shard_size="24KB")
    GenerationConfig(
        bos_token_id=ids["<s>"], eos_token_id=[ids["<|im_end|>"], ids["</s>"]], do_sample=False,
    ).save_pretrained(directory)
    return Built(directory, kind)


def quantize_fp8(src: str | Path, dst: str | Path, block: int = 128) -> Path:
    """Copy checkpoint `src` to `dst` with every linear weight FP8 block-quantised as DeepSeek
    ships them: float8_e4m3fn weights, float32 `weight_scale_inv` = amax(block) / 448 per
    block x block tile, and the fp8 `quantization_config` in config.json. Embeddings, the LM head,
    norms and routers stay as they are (as in DeepSeek's release)."""
    from safetensors.torch import load_file, save_file

    src, dst = Path(src), Path(dst)
    shutil.copytree(src, dst, dirs_exist_ok=True)
    index = json.loads((src / "model.safetensors.index.json").read_text())
    weight_map: dict[str, str] = {}
    for shard in sorted(set(index["weight_map"].values())):
        tensors = load_file(str(src / shard))
        out: dict[str, torch.Tensor] = {}
        for name, t in tensors.items():
            out[name] = t
            if _quantised(name, t):
                out[name], out[f"{name}_scale_inv"] = _quantize_block(t, block)
        save_file(out, str(dst / shard))
        weight_map.update(dict.fromkeys(out, shard))
    index["weight_map"] = weight_map
    (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = {
        "activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
        "weight_block_size": [block, block],
    }
    (dst / "config.json").write_text(json.dumps(config, indent=1))
    return dst


def _quantised(name: str, t: torch.Tensor) -> bool:
    skip = ("embed_tokens", "lm_head", "norm", ".gate.weight", "eh_proj")
    return t.dim() == 2 and name.endswith(".weight") and not any(s in name for s in skip)


def _quantize_block(w: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    n, k = w.shape
    rows, cols = -(-n // block), -(-k // block)
    padded = torch.zeros(rows * block, cols * block)
    padded[:n, :k] = w.float()
    tiles = padded.view(rows, block, cols, block)
    scale = tiles.abs().amax(dim=(1, 3)).clamp(min=1e-12) / 448.0  # [rows, cols]
    q = (tiles / scale[:, None, :, None]).clamp(-448, 448).to(torch.float8_e4m3fn)
    return q.view(rows * block, cols * block)[:n, :k].contiguous(), scale.float()


def dequantize_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Copy FP8 checkpoint `src` to `dst` as a float32 one (quantised weights dequantised blockwise,
    `quantization_config` dropped), so transformers can load what the FP8 weights mean."""
    from safetensors.torch import load_file, save_file

    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    index = json.loads((src / "model.safetensors.index.json").read_text())
    raw: dict[str, torch.Tensor] = {}
    for shard in sorted(set(index["weight_map"].values())):
        raw.update(load_file(str(src / shard)))
    out = {}
    for name, t in raw.items():
        if name.endswith("_scale_inv"):
            continue
        if t.dtype == torch.float8_e4m3fn:
            s = raw[f"{name}_scale_inv"]
            n, k = t.shape
            t = t.float() * s.repeat_interleave(128, 0)[:n].repeat_interleave(128, 1)[:, :k]
        out[name] = t.contiguous()
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    config.pop("quantization_config")
    (dst / "config.json").write_text(json.dumps(config, indent=1))
    return dst


def reshard_by_expert(src: str | Path, dst: str | Path, experts_per_shard: int) -> Path:
    """Copy `src` to `dst` re-sharded as DeepSeek's releases are: each shard holds a contiguous run
    of `experts_per_shard` experts of one layer; everything else goes to one shard."""
    from safetensors.torch import load_file, save_file

    src, dst = Path(src), Path(dst)
    shutil.copytree(src, dst, dirs_exist_ok=True)
    index = json.loads((src / "model.safetensors.index.json").read_text())
    for shard in set(index["weight_map"].values()):
        (dst / shard).unlink()
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for shard in sorted(set(index["weight_map"].values())):
        for name, t in load_file(str(src / shard)).items():
            parts = name.split(".")
            key = "rest"
            if ".mlp.experts." in name:
                key = f"layer{parts[2]}-experts{int(parts[5]) // experts_per_shard}"
            groups.setdefault(f"model-{key}.safetensors", {})[name] = t
    for fname, tensors in groups.items():
        save_file(tensors, str(dst / fname))
    index["weight_map"] = {n: f for f, ts in groups.items() for n in ts}
    (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    return dst


def patch_tensors(directory: str | Path, patches: dict[str, Any]) -> Path:
    """Rewrite tensors of the checkpoint in `directory` in place: `patches` maps a tensor's name to
    a function of its current value (a float32 copy) returning the new one (same shape; stored in
    the tensor's dtype). KeyError names a tensor the checkpoint lacks. Used to steer a random
    model: route every token to chosen experts (`e_score_correction_bias`), or make an EOS id likely
    (`lm_head.weight`), while transformers still reads exactly what the engine reads."""
    from safetensors.torch import load_file, save_file

    directory = Path(directory)
    weight_map = json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"]
    missing = sorted(set(patches) - set(weight_map))
    if missing:
        raise KeyError(f"{directory}: no tensors {missing}")
    for shard in sorted({weight_map[name] for name in patches}):
        tensors = load_file(str(directory / shard))
        for name, fn in patches.items():
            if weight_map[name] == shard:
                old = tensors[name]
                new = fn(old.float().clone())
                assert new.shape == old.shape, (name, new.shape, old.shape)
                tensors[name] = new.to(old.dtype).contiguous()
        save_file(tensors, str(directory / shard), metadata={"format": "pt"})
    return directory


def main(argv: list[str] | None = None) -> int:
    """`python -m tests.checkpoints DIR [--kind K] [--seed N]`: a small random checkpoint built by
    transformers (the test extra), for trying `moeplane up -f` without a GPU or network."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.checkpoints", description=main.__doc__)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--kind", choices=KINDS, default="deepseek-v3")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    built = build_checkpoint(args.kind, args.directory, seed=args.seed)
    print(f"wrote a random {built.kind} checkpoint (config.json, sharded safetensors, tokenizer, chat "
          f"template, generation_config.json) to {built.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
