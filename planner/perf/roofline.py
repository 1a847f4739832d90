"""A roofline cost model of one forward step of an EP group, from the model's and GPU's constants.

Every part of a step costs `max(FLOPs / (peak × efficiency), bytes / (HBM bandwidth × efficiency))`
on the busiest GPU of the group:

- attention: projections (weights read once per step) and the core (scores and values over the
  context: prefill is causal over the prompt, decode reads each sequence's whole KV cache; MLA
  decode runs in the weight-absorbed form over the compressed latent, as FlashMLA does);
- dense MLPs of the first k layers;
- routed experts: a GPU holding `s` expert slots receives `tokens × top-k / balancedness`
  token-expert pairs, so each expert GEMM sees `tokens × top-k / (s × balancedness)` rows: few
  slots per GPU (wide EP) raise the arithmetic intensity, many slots lower it;
- shared experts and router on every GPU; the lm_head once per step;
- dispatch and combine (two all-to-alls per MoE layer): prefill uses DeepEP's normal kernels
  (one RDMA copy per destination node, then NVLink forwarding), decode its low-latency kernels
  (one RDMA copy per remote expert). Groups on one node use NVLink only.

Without two-batch overlap a step is compute + communication. With it the step runs two
micro-batches of half the tokens, each paying the full weight reads, while one micro-batch's
communication hides behind the other's computation: `2 × max(compute(t/2), comm(t/2))`.

End to end, a step takes longer than its kernels: `Efficiency.inflation` scales the roofline,
calibrated per GPU generation on one published benchmark each and checked against the others
(`perf/published.py`); the breakdown shows it as `overhead_ms`. Limits kept on
purpose (the planner's correction factor absorbs them live): uniform routing apart from the
balancedness factor, no KV up-projection cost of prefix-cache hits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from moeplane.api.arch import AttentionKind, ModelArch
from moeplane.api.enums import Role
from moeplane.api.hardware import HardwareSpec
from moeplane.api.layout import GroupLayout
from moeplane.planner.perf.errors import PerfModelError


@dataclass(frozen=True)
class Efficiency:
    """Fractions of datasheet peaks that tuned kernels reach (defaults from published kernels).

    DeepGEMM runs FP8 GEMMs at ~1,350-1,550 of 1,979 TFLOP/s on H800; FlashMLA reaches 660 TFLOP/s
    compute-bound and 3,000 GB/s memory-bound; DeepEP moves ~40-46 GB/s over a 50 GB/s NIC and
    ~150 GB/s over H800 NVLink.
    """

    gemm_flops: float = 0.65
    attention_flops: float = 0.6
    hbm: float = 0.85
    nvlink: float = 0.75
    rdma: float = 0.8
    all_to_all_latency_s: float = 30e-6  # per all-to-all across nodes (launch, signalling)
    nvlink_latency_s: float = 8e-6  # per all-to-all inside one NVLink domain
    step_overhead_s: float = 1.5e-3  # scheduling, sampling and launch gaps per step
    # End-to-end step time over the kernel roofline: uneven batches across DP ranks (the slowest
    # rank sets the pace of every collective), imperfect overlap, scheduler gaps, kernels short
    # of their datasheet peaks. Calibrated per GPU generation on one published benchmark each
    # (`perf/published.py`, the rows marked fit; `calibrate()` recomputes these): Hopper on
    # SGLang's 96 x H100 DeepSeek run, Blackwell on SGLang's GB200 NVL72 run (BF16 attention,
    # FP8 MoE). Every other published row is held out and checked against the model.
    prefill_inflation: float = 1.608
    decode_inflation: float = 1.292
    blackwell_prefill_inflation: float = 2.004
    blackwell_decode_inflation: float = 2.283

    def __post_init__(self) -> None:
        for name in ("gemm_flops", "attention_flops", "hbm", "nvlink", "rdma"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise PerfModelError(f"efficiency.{name} must be in (0, 1], got {value}")
        factors = (
            self.prefill_inflation,
            self.decode_inflation,
            self.blackwell_prefill_inflation,
            self.blackwell_decode_inflation,
        )
        if min(factors) < 1:
            raise PerfModelError(f"efficiency inflation factors must be >= 1, got {factors}")

    def inflation(self, hardware: str, prefill: bool) -> float:
        """The end-to-end factor of this GPU's generation."""
        if hardware in BLACKWELL:
            return self.blackwell_prefill_inflation if prefill else self.blackwell_decode_inflation
        return self.prefill_inflation if prefill else self.decode_inflation


BLACKWELL = frozenset({"b200", "gb200"})


@dataclass(frozen=True)
class RooflineOptions:
    """What the serving engine does beyond the architecture: overlap, balance, MTP, cache hits."""

    two_batch_overlap: bool = True
    balancedness: float = 0.9  # EPLB's mean/max per-GPU token load
    prefix_cache_hit_rate: float = 0.0  # prefill: share of input tokens whose KV is cached
    mtp_draft_tokens: int = 0  # decode: tokens drafted by multi-token prediction per step
    mtp_acceptance: float = 0.0  # decode: probability that a draft token is accepted
    dispatch_bytes_per_element: float = 1.0  # FP8 dispatch
    combine_bytes_per_element: float = 2.0  # BF16 combine
    efficiency: Efficiency = field(default_factory=Efficiency)

    def __post_init__(self) -> None:
        if not 0 < self.balancedness <= 1:
            raise PerfModelError(f"balancedness must be in (0, 1], got {self.balancedness}")
        if not 0 <= self.prefix_cache_hit_rate < 1:
            raise PerfModelError(f"prefix_cache_hit_rate must be in [0, 1), got {self.prefix_cache_hit_rate}")
        if self.mtp_draft_tokens < 0 or not 0 <= self.mtp_acceptance <= 1:
            raise PerfModelError(
                f"mtp_draft_tokens must be >= 0 and mtp_acceptance in [0, 1], got "
                f"{self.mtp_draft_tokens} and {self.mtp_acceptance}"
            )

    @property
    def output_tokens_per_step(self) -> float:
        """Tokens a decoding sequence emits per step: 1 plus the expected accepted drafts."""
        accepted = sum(self.mtp_acceptance ** (i + 1) for i in range(self.mtp_draft_tokens))
        return 1.0 + accepted


@dataclass(frozen=True)
class StepBreakdown:
    """Seconds one step spends in each part on the busiest GPU (before overlap)."""

    tokens_per_rank: float  # query tokens each DP rank runs this step
    attention_proj_s: float
    attention_core_s: float
    dense_mlp_s: float
    routed_experts_s: float
    shared_experts_s: float
    lm_head_s: float
    dispatch_s: float
    combine_s: float
    tp_allreduce_s: float
    overhead_s: float
    two_batch_overlap: bool
    total_s: float

    @property
    def compute_s(self) -> float:
        return (
            self.attention_proj_s
            + self.attention_core_s
            + self.dense_mlp_s
            + self.routed_experts_s
            + self.shared_experts_s
            + self.lm_head_s
        )

    @property
    def communication_s(self) -> float:
        return self.dispatch_s + self.combine_s + self.tp_allreduce_s

    def as_dict(self) -> dict[str, float | bool]:
        """Milliseconds per part, for printing and JSON."""
        parts = {
            "attention_proj_ms": self.attention_proj_s,
            "attention_core_ms": self.attention_core_s,
            "dense_mlp_ms": self.dense_mlp_s,
            "routed_experts_ms": self.routed_experts_s,
            "shared_experts_ms": self.shared_experts_s,
            "lm_head_ms": self.lm_head_s,
            "dispatch_ms": self.dispatch_s,
            "combine_ms": self.combine_s,
            "tp_allreduce_ms": self.tp_allreduce_s,
            "compute_ms": self.compute_s,
            "communication_ms": self.communication_s,
            "overhead_ms": self.overhead_s,
            # What two-batch overlap hid: the parts summed minus the step.
            "overlap_hidden_ms": self.compute_s + self.communication_s + self.overhead_s - self.total_s,
            "total_ms": self.total_s,
        }
        out: dict[str, float | bool] = {k: round(v * 1e3, 4) for k, v in parts.items()}
        out["tokens_per_rank"] = round(self.tokens_per_rank, 3)
        out["two_batch_overlap"] = self.two_batch_overlap
        return out


def _roof(flops: float, nbytes: float, flops_per_s: float, bytes_per_s: float) -> float:
    return max(flops / flops_per_s, nbytes / bytes_per_s)


class RooflineModel:
    """Step times of one pool's EP group (`layout`) serving `arch` on `hw`.

    Implements `PrefillStepModel` and `DecodeStepModel` (see `step_model.py`).
    """

    def __init__(
        self,
        arch: ModelArch,
        hw: HardwareSpec,
        layout: GroupLayout,
        options: RooflineOptions | None = None,
    ) -> None:
        if layout.expert_slots % layout.expert_parallel:
            raise PerfModelError(
                f"{layout.role.value}: {layout.expert_slots} expert slots do not divide among "
                f"expertParallel {layout.expert_parallel} GPUs"
            )
        self.arch, self.hw, self.layout = arch, hw, layout
        self.options = options or RooflineOptions()
        eff = self.options.efficiency
        weight_peak = hw.fp8_flops if arch.weight_bytes_per_param <= 1 else hw.bf16_flops
        self._gemm_flops_per_s = weight_peak * eff.gemm_flops
        self._attn_flops_per_s = hw.bf16_flops * eff.attention_flops
        self._hbm_bytes_per_s = hw.hbm_bytes_per_s * eff.hbm

    # ---- the StepTimeModel protocol -----------------------------------------------------------
    @property
    def role(self) -> Role:
        return self.layout.role

    @property
    def dp_ranks(self) -> int:
        return self.layout.attention_dp_size

    @property
    def gpus_per_group(self) -> int:
        return self.layout.gpus_per_group

    @property
    def nodes_per_group(self) -> int:
        return self.layout.nodes_per_group

    @property
    def kv_tokens_per_rank(self) -> int:
        return self.layout.kv_tokens_per_gpu

    @property
    def output_tokens_per_step(self) -> float:
        return self.options.output_tokens_per_step

    def prefill_step_s(self, tokens_per_rank: float, isl_tokens: float) -> float:
        return self.prefill_breakdown(tokens_per_rank, isl_tokens).total_s

    def decode_step_s(self, batch_per_rank: float, context_tokens: float) -> float:
        return self.decode_breakdown(batch_per_rank, context_tokens).total_s

    # ---- breakdowns ---------------------------------------------------------------------------
    def prefill_breakdown(self, tokens_per_rank: float, isl_tokens: float) -> StepBreakdown:
        """A prefill step in which every DP rank runs `tokens_per_rank` input tokens of prompts
        `isl_tokens` long (prefix-cache hits are input tokens that skip the computation)."""
        if tokens_per_rank < 0 or isl_tokens <= 0:
            raise PerfModelError(
                f"prefill step needs tokens_per_rank >= 0 and isl_tokens > 0, got {tokens_per_rank} "
                f"and {isl_tokens}"
            )
        new_fraction = 1.0 - self.options.prefix_cache_hit_rate
        return self._step(
            query_tokens=tokens_per_rank * new_fraction,
            sequences=tokens_per_rank / isl_tokens,
            context_tokens=isl_tokens,
            prefill=True,
        )

    def decode_breakdown(self, batch_per_rank: float, context_tokens: float) -> StepBreakdown:
        """A decode step in which every DP rank runs `batch_per_rank` sequences whose KV caches hold
        `context_tokens` tokens each (each sequence runs 1 + MTP draft query tokens)."""
        if batch_per_rank < 0 or context_tokens < 0:
            raise PerfModelError(
                f"decode step needs batch_per_rank >= 0 and context_tokens >= 0, got {batch_per_rank} "
                f"and {context_tokens}"
            )
        per_seq = 1 + self.options.mtp_draft_tokens
        return self._step(
            query_tokens=batch_per_rank * per_seq,
            sequences=batch_per_rank,
            context_tokens=context_tokens,
            prefill=False,
        )

    def with_options(self, **changes: object) -> RooflineModel:
        return RooflineModel(self.arch, self.hw, self.layout, replace(self.options, **changes))  # type: ignore[arg-type]

    # ---- internals ----------------------------------------------------------------------------
    def _step(
        self, query_tokens: float, sequences: float, context_tokens: float, prefill: bool
    ) -> StepBreakdown:
        opts, eff = self.options, self.options.efficiency
        if opts.two_batch_overlap:
            half = self._parts(query_tokens / 2, sequences / 2, context_tokens, prefill)
            parts = {k: 2 * v for k, v in half.items()}
            compute_half = sum(v for k, v in half.items() if k not in _COMM)
            comm_half = sum(half[k] for k in _COMM)
            # One micro-batch's compute hides the other's communication; the first and last
            # layers of the pipeline cannot hide anything (fill and drain).
            fill = min(compute_half, comm_half) * 2 / max(1, self.arch.num_layers)
            body = 2 * max(compute_half, comm_half) + fill
        else:
            parts = self._parts(query_tokens, sequences, context_tokens, prefill)
            body = sum(parts.values())
        inflation = eff.inflation(self.hw.name, prefill)
        return StepBreakdown(
            tokens_per_rank=query_tokens,
            two_batch_overlap=opts.two_batch_overlap,
            overhead_s=eff.step_overhead_s + body * (inflation - 1),
            total_s=body * inflation + eff.step_overhead_s,
            **parts,
        )

    def _parts(self, t: float, seqs: float, ctx: float, prefill: bool) -> dict[str, float]:
        """Seconds per part for `t` query tokens of `seqs` sequences on one DP rank."""
        a, lay, opts = self.arch, self.layout, self.options
        tp = lay.attention_tp_size
        gemm, attn, hbm = self._gemm_flops_per_s, self._attn_flops_per_s, self._hbm_bytes_per_s
        wb = a.weight_bytes_per_param
        h, heads = a.hidden_size, a.num_attention_heads

        # Attention projections, tensor-parallel over `tp` GPUs of the DP rank.
        p_attn = a.attention_params_per_layer / tp
        attention_proj = a.num_layers * _roof(2 * p_attn * t, p_attn * wb, gemm, hbm)

        # Attention core. Prefill: causal over new tokens on top of `ctx - new` cached tokens.
        # Decode (MLA absorbed): scores over latent+rope, values over the latent.
        kv_elems = a.kv_elements_per_token_per_layer
        if a.attention is AttentionKind.MLA:
            qk_dim = (
                a.qk_nope_head_dim + a.qk_rope_head_dim if prefill else a.kv_lora_rank + a.qk_rope_head_dim
            )
            v_dim = a.v_head_dim if prefill else a.kv_lora_rank
            kv_read_elems: float = kv_elems  # the latent is replicated over attention TP
        else:
            qk_dim = v_dim = a.head_dim
            kv_read_elems = kv_elems / min(tp, max(1, a.num_kv_heads))
        heads_per_gpu = heads / tp
        if prefill:
            new_per_seq = t / seqs if seqs else 0.0
            pairs = seqs * (new_per_seq * (ctx - new_per_seq) + new_per_seq * (new_per_seq + 1) / 2)
            kv_bytes = seqs * ctx * kv_read_elems * a.kv_bytes_per_element
        else:
            pairs = t * ctx
            kv_bytes = seqs * ctx * kv_read_elems * a.kv_bytes_per_element
        core_flops = 2 * heads_per_gpu * (qk_dim + v_dim) * pairs
        attention_core = a.num_layers * _roof(core_flops, kv_bytes, attn, hbm)

        # Dense MLPs (first k layers), tensor-parallel like attention.
        p_dense = 3 * h * a.dense_intermediate_size / tp
        dense = a.first_k_dense_layers * _roof(2 * p_dense * t, p_dense * wb, gemm, hbm)

        # MoE: each GPU dispatches its share of the rank's tokens.
        t_moe = t / tp
        slots = lay.routed_experts_per_gpu
        pairs_on_gpu = t_moe * a.num_experts_per_tok / opts.balancedness
        touched = slots * (1 - math.exp(-pairs_on_gpu / slots)) if slots else 0.0
        routed = a.num_moe_layers * _roof(
            2 * a.expert_params * pairs_on_gpu, touched * a.expert_bytes, gemm, hbm
        )
        shared_params = a.expert_params * a.num_shared_experts
        router_flops = 2 * h * a.num_routed_experts * t_moe
        shared = a.num_moe_layers * _roof(
            2 * shared_params * t_moe + router_flops, shared_params * wb, gemm, hbm
        )
        logits_tokens = seqs if prefill else t
        lm_head = _roof(2 * h * a.vocab_size * logits_tokens / tp, h * a.vocab_size * 2 / tp, gemm, hbm)

        dispatch = a.num_moe_layers * self._all_to_all_s(t_moe, opts.dispatch_bytes_per_element, prefill)
        combine = a.num_moe_layers * self._all_to_all_s(t_moe, opts.combine_bytes_per_element, prefill)
        allreduce = 0.0
        if tp > 1:
            ring = 2 * t * h * 2 * (tp - 1) / tp
            allreduce = a.num_layers * ring / (self.hw.nvlink_bytes_per_s * opts.efficiency.nvlink)
        return {
            "attention_proj_s": attention_proj,
            "attention_core_s": attention_core,
            "dense_mlp_s": dense,
            "routed_experts_s": routed,
            "shared_experts_s": shared,
            "lm_head_s": lm_head,
            "dispatch_s": dispatch,
            "combine_s": combine,
            "tp_allreduce_s": allreduce,
        }

    def _all_to_all_s(self, tokens: float, bytes_per_element: float, prefill: bool) -> float:
        """One all-to-all (dispatch or combine) of `tokens` tokens from one GPU, busiest GPU."""
        a, lay, hw, opts = self.arch, self.layout, self.hw, self.options
        eff = opts.efficiency
        k, row = a.num_experts_per_tok, a.hidden_size * bytes_per_element
        ep, nodes = lay.expert_parallel, lay.nodes_per_group
        if ep == 1 or tokens == 0:
            return 0.0
        nvlink = hw.nvlink_bytes_per_s * eff.nvlink
        rdma = hw.rdma_bytes_per_s * eff.rdma
        in_domain = min(ep, max(lay.gpus_per_node, hw.nvlink_domain_gpus))
        if nodes == 1 or in_domain >= ep:
            moved = tokens * k * (1 - 1 / ep) * row
            return moved / nvlink / opts.balancedness + eff.nvlink_latency_s
        if prefill:
            # Normal kernels: one RDMA copy per distinct remote node, then NVLink fan-out.
            miss_own = (1 - 1 / nodes) ** k
            distinct = nodes * (1 - (1 - 1 / nodes) ** k)
            remote_nodes = distinct - (1 - miss_own)
            rdma_bytes = tokens * remote_nodes * row
            nvlink_bytes = tokens * k * row * (in_domain - 1) / in_domain
        else:
            # Low-latency kernels: one RDMA copy per expert outside the NVLink domain.
            rdma_bytes = tokens * k * (1 - in_domain / ep) * row
            nvlink_bytes = tokens * k * ((in_domain - 1) / ep) * row
        moved_s = max(rdma_bytes / rdma, nvlink_bytes / nvlink)
        return moved_s / opts.balancedness + eff.all_to_all_latency_s


_COMM = ("dispatch_s", "combine_s", "tp_allreduce_s")
