"""Benchmark of the expert-parallel engine: `python bench/ep.py [--quick] [--json OUT]`.

At EP=1, 2 and 4 (one process per rank, gloo, one CPU thread each) it measures:
- tokens/s of one MoE layer and of a full forward pass (every rank with its own batch);
- the MoE layer's time split: router / dispatch / experts / combine / shared experts;
- dispatch + combine time over a raw `all_to_all_single` pair of the same bytes (dispatch's packed
  rows forward, hidden states back, the same splits, from preallocated buffers), measured in the
  same run, interleaved (target <= 1.25x); also as a ratio of process CPU time, which on shared
  cores leaves out the time a rank waits for a descheduled peer;
- a floor for that ratio: the raw pair plus the two passes over the data that a dispatch which
  gathers rows and a combine which sums them cannot avoid, timed on their own in the same loop.
  On loopback gloo the "network" is memory copies too, so each pass costs a sizeable fraction of
  the raw exchange; on GPUs (HBM at TB/s against NVLink/RDMA) the same passes are nearly free;
- RSS per rank.
It also times the grouped GEMM against a per-expert loop: `torch._grouped_mm` in bf16 on a GPU
when one is visible, and the CPU build's kernel (if any) in fp32 otherwise.
The JSON's top-level `dispatch_combine_over_raw_a2a` is the worst ratio measured.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from moeplane.api.arch import AttentionKind, ModelArch, RouterScoring
from moeplane.workers.ep.dispatch import combine, dispatch, packed_row_bytes
from moeplane.workers.ep.grouped_gemm import GemmImpl, GroupedExperts, grouped_mm_supported
from moeplane.workers.ep.launch import RankContext, spawn_ranks
from moeplane.workers.model.metadata import prefill_metadata
from moeplane.workers.model.moe import MoEBlock
from moeplane.workers.model.profiling import PhaseTimer
from moeplane.workers.model.runner import EPModelRunner


@dataclass(frozen=True)
class BenchConfig:
    hidden_size: int
    moe_intermediate_size: int
    num_experts: int
    top_k: int
    tokens_per_rank: int
    seq_len: int
    iters: int
    warmup: int
    a2a_iters: int

    def arch(self) -> ModelArch:
        """A DeepSeek-shaped model, narrow enough for the CPU: 1 dense + 3 MoE layers, MLA."""
        return ModelArch(
            name="bench", attention=AttentionKind.MLA, scoring=RouterScoring.SIGMOID, vocab_size=260,
            hidden_size=self.hidden_size, num_layers=4, first_k_dense_layers=1,
            dense_intermediate_size=2 * self.hidden_size, moe_intermediate_size=self.moe_intermediate_size,
            num_routed_experts=self.num_experts, num_shared_experts=1, num_experts_per_tok=self.top_k,
            n_group=4, topk_group=2, routed_scaling_factor=2.5, num_attention_heads=8, q_lora_rank=128,
            kv_lora_rank=128, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
            weight_bytes_per_param=4.0, kv_bytes_per_element=4.0,
        )


QUICK = BenchConfig(hidden_size=512, moe_intermediate_size=256, num_experts=16, top_k=4,
                    tokens_per_rank=1024, seq_len=256, iters=4, warmup=1, a2a_iters=30)
FULL = BenchConfig(hidden_size=1024, moe_intermediate_size=512, num_experts=32, top_k=8,
                   tokens_per_rank=4096, seq_len=512, iters=10, warmup=2, a2a_iters=40)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def bench_rank(ctx: RankContext, cfg: BenchConfig) -> dict:
    """One rank's measurements (the launcher's target)."""
    comm = ctx.comm("cpu")
    arch = cfg.arch()
    runner = EPModelRunner(arch, weights=0, comm=comm)
    moe = runner.model.decoder_layers()[arch.first_k_dense_layers].mlp
    assert isinstance(moe, MoEBlock)
    placement = runner.layer_placements[0]
    gen = torch.Generator().manual_seed(100 + ctx.rank)
    x = torch.randn(cfg.tokens_per_rank, arch.hidden_size, generator=gen)

    def barrier() -> None:
        comm.barrier()

    out: dict = {"rank": ctx.rank}
    with torch.inference_mode():
        # 1. One MoE layer, with its time split.
        timer = PhaseTimer()
        layer_s = []
        for i in range(cfg.warmup + cfg.iters):
            if i == cfg.warmup:
                timer.reset()
            barrier()
            t0 = time.perf_counter()
            moe(x, placement, comm, timer)
            layer_s.append(time.perf_counter() - t0)
        out["moe_layer_s"] = statistics.median(layer_s[cfg.warmup :])
        out["split_s"] = {k: v / cfg.iters for k, v in timer.seconds.items()}

        # 2. Dispatch + combine against a raw all_to_all_single pair moving the same bytes with the
        # same splits (forward: hidden plus dispatch's 8 bytes of slot/weight per top-k entry per
        # row; back: hidden), from buffers allocated once, interleaved.
        topk_ids, topk_w = moe.gate(x)
        handle = dispatch(x, topk_ids, topk_w, placement, comm)
        send, recv = list(handle.send_splits), list(handle.recv_splits)
        row_bytes = packed_row_bytes(arch.hidden_size, x.dtype, arch.num_experts_per_tok)
        fwd_out = torch.randint(0, 256, (sum(send), row_bytes), dtype=torch.uint8, generator=gen)
        fwd_in = torch.empty(sum(recv), row_bytes, dtype=torch.uint8)
        back_out = x.new_empty(sum(recv), arch.hidden_size).normal_(generator=gen)
        back_in = x.new_empty(sum(send), arch.hidden_size)
        # Inputs are identical every iteration, so the expert side's output shape is too.
        expert_rows = torch.randn(handle.num_recv_rows, arch.hidden_size, generator=gen)
        # The two passes over the data that any gather-based dispatch and sum-based combine make
        # besides the collectives: gather the rows to send, sum the returned rows per token.
        passes_rows = x.new_empty(sum(send), arch.hidden_size)
        passes_out = x.new_zeros(x.shape[0], arch.hidden_size)
        dc_s, raw_s, dc_cpu_s, raw_cpu_s, passes_s = [], [], [], [], []
        for i in range(cfg.warmup + cfg.a2a_iters):
            barrier()
            c0, t0 = time.process_time(), time.perf_counter()
            h = dispatch(x, topk_ids, topk_w, placement, comm)
            combine(expert_rows, h)
            t1, c1 = time.perf_counter(), time.process_time()
            barrier()
            c2, t2 = time.process_time(), time.perf_counter()
            if comm.world_size > 1:
                dist.all_to_all_single(fwd_in, fwd_out, recv, send, group=comm.group)
                dist.all_to_all_single(back_in, back_out, send, recv, group=comm.group)
            t3, c3 = time.perf_counter(), time.process_time()
            torch.index_select(x, 0, handle.send_token_idx, out=passes_rows)
            passes_out.zero_().index_add_(0, handle.send_token_idx, back_in)
            t4 = time.perf_counter()
            if i >= cfg.warmup:
                passes_s.append(t4 - t3)
                dc_s.append(t1 - t0)
                raw_s.append(t3 - t2)
                dc_cpu_s.append(c1 - c0)
                raw_cpu_s.append(c3 - c2)
        out["dispatch_combine_s"] = statistics.median(dc_s)
        out["raw_a2a_s"] = statistics.median(raw_s)
        out["dispatch_combine_min_s"] = min(dc_s)
        out["raw_a2a_min_s"] = min(raw_s)
        out["data_passes_min_s"] = min(passes_s)
        # CPU time of the whole rank process (gloo's threads included): what the exchange costs
        # in work, without the time spent waiting for a descheduled peer on shared cores.
        out["dispatch_combine_cpu_s"] = statistics.median(dc_cpu_s)
        out["raw_a2a_cpu_s"] = statistics.median(raw_cpu_s)
        out["a2a_bytes_sent"] = sum(send) * row_bytes + sum(recv) * arch.hidden_size * x.element_size()

        # 3. The full forward pass over this rank's own sequences.
        ids = torch.randint(0, 256, (cfg.tokens_per_rank,), generator=gen)
        meta = prefill_metadata([cfg.seq_len] * (cfg.tokens_per_rank // cfg.seq_len))
        fwd_s = []
        for _ in range(cfg.warmup + cfg.iters // 2):
            barrier()
            t0 = time.perf_counter()
            runner.forward_hidden(ids, meta)
            fwd_s.append(time.perf_counter() - t0)
        out["forward_s"] = statistics.median(fwd_s[cfg.warmup :])
    out["rss_bytes"] = _rss_bytes()
    comm.close()
    return out


def _median_s(fn, iters: int, warmup: int, sync: bool) -> float:  # type: ignore[no-untyped-def]
    times = []
    for i in range(warmup + iters):
        if sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


@dataclass(frozen=True)
class GemmCase:
    """One rank's routed-expert work: `slots` local experts, `rows` routed rows, SwiGLU dims."""

    name: str
    slots: int
    rows: int
    hidden: int
    inter: int


# DeepSeek-V3 expert shapes (hidden 7168, moe_intermediate 2048). Prefill EP32: 9 slots per GPU and
# 4,096 tokens per DP rank x top-8 spread over 288 slots ~ 32k rows; decode EP144: 2 slots and
# 128 sequences per rank ~ 1k rows. The CPU case is narrow enough for the fp32 CPU build.
GPU_CASES = (
    GemmCase("deepseek-prefill-ep32", slots=9, rows=32768, hidden=7168, inter=2048),
    GemmCase("deepseek-prefill-ep32-16k", slots=9, rows=16384, hidden=7168, inter=2048),
    GemmCase("deepseek-prefill-ep32-8k", slots=9, rows=8192, hidden=7168, inter=2048),
    GemmCase("deepseek-prefill-ep32-4k", slots=9, rows=4096, hidden=7168, inter=2048),
    GemmCase("deepseek-decode-ep144", slots=2, rows=1024, hidden=7168, inter=2048),
    GemmCase("deepseek-decode-ep32", slots=9, rows=1024, hidden=7168, inter=2048),
)
CPU_CASES = (GemmCase("cpu-small", slots=16, rows=2048, hidden=512, inter=256),)


def _gemm_case(case: GemmCase, quick: bool, device: str, dtype: torch.dtype) -> dict:
    """A full SwiGLU expert pass (w13, then w2) through `GroupedExperts`, grouped kernel vs loop."""
    cuda = device == "cuda"
    rows = case.rows // (2 if quick and not cuda else 1)
    gen = torch.Generator(device=device).manual_seed(0)
    # Uneven, skewed expert loads, as routing produces.
    share = torch.rand(case.slots, generator=gen, device=device) ** 3 + 0.05
    counts = torch.bincount(torch.multinomial(share, rows, True, generator=gen), minlength=case.slots)
    experts = GroupedExperts(case.slots, case.hidden, case.inter).to(device=device, dtype=dtype)
    experts.w13.copy_(torch.randn(experts.w13.shape, generator=gen, device=device) / case.hidden**0.5)
    experts.w2.copy_(torch.randn(experts.w2.shape, generator=gen, device=device) / case.inter**0.5)
    x = torch.randn(rows, case.hidden, device=device, dtype=dtype, generator=gen)
    flops = 2 * rows * case.hidden * 3 * case.inter
    result: dict = {**asdict(case), "rows": rows}

    def run(impl: GemmImpl) -> torch.Tensor:
        experts.impl = impl
        return experts(x, counts)

    iters, warmup = (10, 3) if cuda else (5, 2)
    loop_s = _median_s(lambda: run(GemmImpl.LOOP), iters, warmup, cuda)
    result.update(loop_ms=loop_s * 1e3, loop_tflops=flops / loop_s / 1e12)
    if not hasattr(torch, "_grouped_mm") or (cuda and not grouped_mm_supported(x, experts.w13)):
        result["grouped_ms"] = None
        return result
    try:
        grouped_s = _median_s(lambda: run(GemmImpl.TORCH_GROUPED), iters, warmup, cuda)
    except RuntimeError as e:
        result["grouped_ms"], result["error"] = None, str(e).splitlines()[0]
        return result
    ref = run(GemmImpl.LOOP).float()
    err = ((run(GemmImpl.TORCH_GROUPED).float() - ref).norm() / ref.norm()).item()
    result.update(grouped_ms=grouped_s * 1e3, grouped_tflops=flops / grouped_s / 1e12,
                  loop_over_grouped=loop_s / grouped_s, rel_err=err)
    return result


def bench_grouped_gemm(quick: bool) -> dict:
    """torch._grouped_mm against the per-expert loop, on the GPU (bf16) or the CPU build (fp32)."""
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    with torch.inference_mode():
        cases = [_gemm_case(c, quick, device, dtype) for c in (GPU_CASES if cuda else CPU_CASES)]
    return {"device": torch.cuda.get_device_name() if cuda else "cpu", "dtype": str(dtype),
            "torch": torch.__version__, "cases": cases}


def summarize(world: int, ranks: list[dict], cfg: BenchConfig) -> dict:
    total_tokens = world * cfg.tokens_per_rank
    phases = sorted({k for r in ranks for k in r["split_s"]})
    summary = {
        "ep": world,
        "tokens_per_rank": cfg.tokens_per_rank,
        "moe_layer_tokens_per_s": total_tokens / max(r["moe_layer_s"] for r in ranks),
        "forward_tokens_per_s": total_tokens / max(r["forward_s"] for r in ranks),
        "split_ms": {p: 1e3 * max(r["split_s"].get(p, 0.0) for r in ranks) for p in phases},
        "dispatch_combine_ms": 1e3 * max(r["dispatch_combine_s"] for r in ranks),
        "raw_a2a_ms": 1e3 * max(r["raw_a2a_s"] for r in ranks),
        "a2a_mib_per_rank": max(r["a2a_bytes_sent"] for r in ranks) / 2**20,
        "rss_mib_per_rank": [round(r["rss_bytes"] / 2**20, 1) for r in ranks],
    }
    if world > 1:
        # Min over interleaved iterations estimates the intrinsic cost: on shared cores the
        # median also counts preemption by other processes at each of the collectives' sync points.
        dc_min = max(r["dispatch_combine_min_s"] for r in ranks)
        raw_min = max(r["raw_a2a_min_s"] for r in ranks)
        summary["dispatch_combine_min_ms"], summary["raw_a2a_min_ms"] = 1e3 * dc_min, 1e3 * raw_min
        summary["dispatch_combine_over_raw_a2a"] = dc_min / raw_min
        # A floor for gather/sum designs on this machine: the raw pair plus the two data passes.
        passes_min = max(r["data_passes_min_s"] for r in ranks)
        summary["data_passes_min_ms"] = 1e3 * passes_min
        summary["floor_over_raw_a2a"] = (raw_min + passes_min) / raw_min
        summary["dispatch_combine_over_floor"] = dc_min / (raw_min + passes_min)
        median_ratio = summary["dispatch_combine_ms"] / summary["raw_a2a_ms"]
        summary["dispatch_combine_over_raw_a2a_median"] = median_ratio
        cpu_ratio = max(r["dispatch_combine_cpu_s"] for r in ranks) / max(r["raw_a2a_cpu_s"] for r in ranks)
        summary["dispatch_combine_over_raw_a2a_cpu"] = cpu_ratio
    return summary


def _gemm_lines(gemm: dict) -> list[str]:
    lines = [f"grouped GEMM (SwiGLU expert, w13 + w2) on {gemm['device']}, {gemm['dtype']}, "
             f"torch {gemm['torch']}:"]
    for c in gemm["cases"]:
        where = f"  {c['name']}: {c['slots']} experts, {c['rows']} rows, {c['hidden']}x{c['inter']}"
        loop = f"per-expert loop {c['loop_ms']:.2f} ms ({c['loop_tflops']:.1f} TFLOP/s)"
        if c.get("grouped_ms") is None:
            lines.append(f"{where}: torch._grouped_mm unavailable ({c.get('error', 'unsupported')}); {loop}")
        else:
            lines.append(f"{where}: torch._grouped_mm {c['grouped_ms']:.2f} ms ({c['grouped_tflops']:.1f} "
                         f"TFLOP/s), {loop}, loop/grouped {c['loop_over_grouped']:.2f}x, "
                         f"rel err {c['rel_err']:.1e}")
    return lines


def print_table(results: list[dict], gemm: dict) -> None:
    base = results[0]
    columns = [("EP", 3), ("layer tok/s", 12), ("vs EP1", 7), ("fwd tok/s", 10), ("vs EP1", 7),
               ("router", 7), ("dispatch", 9), ("experts", 8), ("combine", 8), ("d+c/raw", 8),
               ("(median)", 9), ("(cpu)", 6), ("floor/raw", 10), ("d+c/floor", 10), ("RSS MiB/rank", 13)]
    header = " ".join(f"{name:>{width}}" for name, width in columns)
    print(header)
    print("-" * len(header))
    for r in results:
        sp = r["split_ms"]
        ratio, median = r.get("dispatch_combine_over_raw_a2a"), r.get("dispatch_combine_over_raw_a2a_median")
        cpu = r.get("dispatch_combine_over_raw_a2a_cpu")
        cells = [
            str(r["ep"]), f"{r['moe_layer_tokens_per_s']:.0f}",
            f"{r['moe_layer_tokens_per_s'] / base['moe_layer_tokens_per_s']:.2f}x",
            f"{r['forward_tokens_per_s']:.0f}",
            f"{r['forward_tokens_per_s'] / base['forward_tokens_per_s']:.2f}x",
            *(f"{sp.get(p, 0.0):.1f}ms" for p in ("router", "dispatch", "experts", "combine")),
            "-" if ratio is None else f"{ratio:.2f}x", "-" if median is None else f"{median:.2f}x",
            "-" if cpu is None else f"{cpu:.2f}x",
            *("-" if r.get(k) is None else f"{r[k]:.2f}x"
              for k in ("floor_over_raw_a2a", "dispatch_combine_over_floor")),
            f"{max(r['rss_mib_per_rank']):.0f}",
        ]
        print(" ".join(f"{c:>{width}}" for c, (_, width) in zip(cells, columns, strict=True)))
    print("split: ms per MoE layer call on the slowest rank (experts = permute + grouped GEMM + weighted "
          "local sum); d+c/raw: dispatch+combine over a raw all_to_all_single pair moving the same bytes "
          "with the same splits (min over interleaved runs; median and median process CPU time in "
          "brackets), target <= 1.25x; floor: the raw pair plus the two passes over the data a gather/sum "
          "design cannot skip (gather the rows to send, sum the returned rows), timed alone, same run")
    print("\n".join(_gemm_lines(gemm)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few iterations (< 3 min, 2 cores)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--ep", type=int, nargs="+", default=[1, 2, 4], help="EP sizes to run")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    results = []
    for world in args.ep:
        print(f"[{time.perf_counter() - started:6.1f}s] EP={world}: starting {world} rank process(es)...",
              file=sys.stderr, flush=True)
        ranks = spawn_ranks(bench_rank, world, (cfg,), timeout_s=600, collective_timeout_s=300)
        results.append(summarize(world, ranks, cfg))
    print(f"[{time.perf_counter() - started:6.1f}s] grouped GEMM...", file=sys.stderr, flush=True)
    gemm = bench_grouped_gemm(args.quick)
    print_table(results, gemm)
    ratios = [r["dispatch_combine_over_raw_a2a"] for r in results if "dispatch_combine_over_raw_a2a" in r]
    report = {
        "dispatch_combine_over_raw_a2a": max(ratios) if ratios else None,
        "target_ratio": 1.25,
        "config": asdict(cfg),
        "results": results,
        "grouped_gemm": gemm,
        "wall_s": time.perf_counter() - started,
        # Ratios measured on shared cores move with the machine's load: record it.
        "load_avg_1m": {"before": load_before, "after": os.getloadavg()[0], "cpus": os.cpu_count()},
    }
    load = report["load_avg_1m"]
    if ratios:
        worst = report["dispatch_combine_over_raw_a2a"]
        print(f"worst dispatch+combine / raw all_to_all_single: {worst:.2f}x "
              f"(total {report['wall_s']:.0f}s, load average {load['before']:.1f} -> {load['after']:.1f} "
              f"on {load['cpus']} CPUs)")
    else:
        print("no EP>1 run, no ratio")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
