"""The DeepSeek-V3-architecture MoE model, per EP rank, and its serving interface.

Serving interface (what prefill/decode engines build on):

- `EPModelRunner(arch, weights, placement=None, comm=None, device="cpu", dtype=torch.float32)`:
  one rank's model as an ordinary in-process object; host it in your own Ray actor. `weights` is
  an int seed (`RandomWeights`) or a `WeightSource` (`SafetensorsWeights(directory)`: a Hugging
  Face checkpoint, sharded, memory-mapped, each rank reading only its own experts, FP8
  dequantised, its config.json checked against `arch`). `comm` is an
  `EPComm` (`EPComm.init(rank, world_size, "tcp://host:port", device, timeout_s)`); None means a
  one-rank group.
- `runner.allocate_kv_cache(num_blocks, block_size)` (or `allocate_kv_cache(arch, num_blocks,
  block_size, dtype, device)`): one tensor per layer, [num_blocks, block_size, kv_elems], with
  kv_elems = kv_lora_rank + qk_rope_head_dim (MLA) or 2 * num_kv_heads * head_dim (GQA).
  `kv_cache_bytes_per_block(arch, block_size, dtype)` is what one block costs over all layers.
- `build_metadata([SeqStep(num_computed_tokens, num_new_tokens, block_table, needs_logits)],
  block_size)` -> `AttentionMetadata` (positions [T], query_start_loc [B+1], context_lens [B],
  block_tables [B, max_blocks], slot_mapping [T], logits_indices [N]). Prefill chunks and decode
  tokens mix in one step; chunked prefill gives the same result as one-shot prefill.
- `runner.forward(input_ids [T], meta, kv_cache) -> logits [N, vocab]` (fp32, rows in
  `logits_indices` order); `forward_hidden` returns the final hidden states [T, hidden]. With
  `kv_cache=None` (and `prefill_metadata(seq_lens)`) it is a cache-less full-sequence forward.
- Every rank of an EP group calls `forward` for every step: an idle rank passes an empty batch
  (`torch.empty(0, dtype=torch.int64)`, `empty_metadata()`), because MoE layers run collectives.
- `runner.take_expert_load()` -> [num_moe_layers, slots_per_rank] rows per local slot;
  `runner.set_placement(placement)` reloads this rank's experts from the weight source.
- Online EPLB: `runner.enable_load_counting(num_buckets, bucket_s)` counts this rank's routed
  tokens per (MoE layer, physical slot) on the device every forward pass; `runner.load_window()`
  copies the window to the host. `runner.begin_placement(target, layers_per_step)` then one
  `runner.advance_placement()` per step, between forward passes and on the same step on every
  rank, moves expert weights between ranks and switches those layers' maps.
- `SkewedWeights(source, arch, RoutingSkew(hot_experts, bias))` raises chosen experts' router
  correction bias: a controlled hot-expert load over any checkpoint.
- `resolve_checkpoint(location)` -> the checkpoint directory on this node (local path, pvc://,
  hf:// through the Hugging Face cache); `read_hf_config(directory).arch` (`moeplane.api.hf_config`)
  is its `ModelArch`.
- `load_tokenizer(location | "bytes", arch)` -> a `Tokenizer` (the checkpoint's, or byte-level for
  `tiny`): encode/decode, EOS ids, token strings, `apply_chat_template` and `encode_chat` exactly
  as transformers.
- `runner.mtp` / `runner.forward_mtp(...)`: DeepSeek-V3's MTP layer when the checkpoint has it;
  never part of `forward`.
- `reference_logits(arch, state_dict, input_ids)` is the single-process definition of correct; it
  and the runner equal transformers' DeepseekV3ForCausalLM / Qwen3MoeForCausalLM.
"""

from moeplane.workers.model.checkpoint import CheckpointError, resolve_checkpoint
from moeplane.workers.model.hf_tokenizer import HFTokenizer
from moeplane.workers.model.metadata import (
    AttentionMetadata,
    MetadataError,
    SeqStep,
    allocate_kv_cache,
    build_metadata,
    kv_cache_bytes_per_block,
    prefill_metadata,
)
from moeplane.workers.model.runner import EPModelRunner, empty_metadata
from moeplane.workers.model.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer
from moeplane.workers.model.weights import RandomWeights, SafetensorsWeights, StateDictWeights, WeightSource

__all__ = [
    "AttentionMetadata",
    "ByteTokenizer",
    "CheckpointError",
    "EPModelRunner",
    "HFTokenizer",
    "MetadataError",
    "RandomWeights",
    "SafetensorsWeights",
    "SeqStep",
    "StateDictWeights",
    "Tokenizer",
    "WeightSource",
    "allocate_kv_cache",
    "build_metadata",
    "empty_metadata",
    "kv_cache_bytes_per_block",
    "load_tokenizer",
    "prefill_metadata",
    "resolve_checkpoint",
]
