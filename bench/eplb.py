"""EPLB benchmark: moeplane's balanced policy against DeepSeek's published EPLB, same run.

    .venv/bin/python bench/eplb.py [--quick] [--json OUT]

Shape: DeepSeek-V3, 58 MoE layers x 256 routed experts, FP8 expert weights.
Loads: Zipf(s) popularity for s in {0.6, 1.0, 1.4}, permuted independently in every layer; and a
drifting sequence (Zipf 1.0 whose per-expert popularity takes a log-normal random walk), each
policy rebalancing from its own previous placement at every step.
Settings: prefill EP32 over 4 nodes with 32 redundant experts (baseline: hierarchical); decode
EP144 over 18 nodes with 32 redundant (baseline: global); EP64 over 8 nodes with none
(baseline: hierarchical, as DeepSeek picks when the node count divides the 8 groups).

Columns: balancedness (mean over layers, and the worst layer); planning time for all 58 layers
(CPU time of one thread, best of N, the two policies interleaved so machine noise hits both
alike); bytes of expert weights that cross GPUs per rebalance (static loads: from the identity
placement; drift: from the policy's own previous placement); `optimum`, the mean over layers of
a per-layer ceiling on balancedness that no placement can beat (`optimum.balancedness_ceiling`:
exact where a placement meets it); and `@opt`, the layers (over all drift steps) where the
policy meets that ceiling, i.e. is provably optimal. Each row pair ends with a verdict: `win`
(ours more balanced on the mean, no worse on the worst layer), `tie-at-optimum` (equal, and
both at the ceiling in every layer: no placement does better) or `LOSS`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from moeplane.api.enums import EplbAlgorithm
from moeplane.api.presets import ModelPreset, model_preset
from moeplane.workers.eplb.metrics import gpu_load, moved_slots, placement_balancedness
from moeplane.workers.eplb.optimum import peak_floor
from moeplane.workers.eplb.rebalance import rebalance
from moeplane.workers.placement import Placement

NUM_LAYERS = 58
NUM_EXPERTS = 256
NUM_GROUPS = 8
TOKENS_PER_WINDOW = 8e6  # routed token-expert pairs per layer in one load window


@dataclass(frozen=True)
class Setting:
    name: str
    num_gpus: int
    num_nodes: int
    num_redundant: int
    baseline: EplbAlgorithm

    @property
    def num_physical(self) -> int:
        return NUM_EXPERTS + self.num_redundant


SETTINGS = (
    Setting("prefill-ep32", 32, 4, 32, EplbAlgorithm.HIERARCHICAL),
    Setting("decode-ep144", 144, 18, 32, EplbAlgorithm.GLOBAL),
    Setting("ep64-r0", 64, 8, 0, EplbAlgorithm.HIERARCHICAL),
)


@dataclass(frozen=True)
class Row:
    setting: str
    load: str
    policy: str
    balancedness_mean: float
    balancedness_worst_layer: float
    plan_ms: float
    bytes_moved: int
    optimum_mean: float
    layers_at_optimum: int
    layers: int


def zipf_load(s: float, seed: int) -> torch.Tensor:
    """[L, E] float64 token counts: Zipf(s) popularity, a fresh permutation in every layer."""
    gen = torch.Generator().manual_seed(seed)
    p = torch.arange(1, NUM_EXPERTS + 1, dtype=torch.float64) ** -s
    p = p / p.sum()
    rows = [p[torch.randperm(NUM_EXPERTS, generator=gen)] for _ in range(NUM_LAYERS)]
    return (torch.stack(rows) * TOKENS_PER_WINDOW).round()


def drift_sequence(steps: int, sigma: float, seed: int) -> list[torch.Tensor]:
    """Zipf(1.0) loads whose log-popularity takes N(0, sigma) steps between windows."""
    gen = torch.Generator().manual_seed(seed)
    load = zipf_load(1.0, seed)
    out = [load]
    for _ in range(steps - 1):
        noise = torch.randn(load.shape, generator=gen, dtype=torch.float64) * sigma
        nxt = load * noise.exp()
        load = (nxt * TOKENS_PER_WINDOW / nxt.sum(-1, keepdim=True)).round()
        out.append(load)
    return out


def best_time_ms(fn: Callable[[], Placement], repeats: int) -> tuple[Placement, float]:
    """Best CPU time of `repeats` calls: the process's own CPU seconds (one thread), which other
    jobs on a shared machine inflate far less than wall time."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.process_time()
        result = fn()
        best = min(best, time.process_time() - start)
    assert result is not None
    return result, best * 1e3


def plan(
    setting: Setting, load: torch.Tensor, policy: EplbAlgorithm, previous: Placement | None
) -> Placement:
    return rebalance(
        load, setting.num_physical, NUM_GROUPS, setting.num_nodes, setting.num_gpus, policy, previous=previous
    )


def at_optimum(load: torch.Tensor, placement: Placement, setting: Setting, floor: torch.Tensor) -> int:
    """Layers whose hottest GPU meets the ceiling's bound (float-rounding tolerance)."""
    peak = gpu_load(load, placement, setting.num_gpus).amax(-1)
    return int((peak <= floor * (1 + 1e-9)).sum())


def ceiling(load: torch.Tensor, setting: Setting) -> tuple[torch.Tensor, float]:
    """([L] lower bound on the hottest GPU, mean over layers of the balancedness ceiling)."""
    floor = peak_floor(load, setting.num_physical, setting.num_gpus)
    mean = load.sum(-1) / setting.num_gpus
    return floor, float((mean / floor).mean())


def run_static(setting: Setting, s: float, repeats: int, expert_bytes: float) -> list[Row]:
    load = zipf_load(s, seed=int(s * 10))
    start = Placement.identity(NUM_LAYERS, NUM_EXPERTS, setting.num_physical)
    floor, optimum = ceiling(load, setting)
    timings: dict[EplbAlgorithm, float] = {}
    placements: dict[EplbAlgorithm, Placement] = {}
    policies = (setting.baseline, EplbAlgorithm.AUTO)
    for _ in range(repeats):  # interleaved, so a noisy moment hits both policies
        for policy in policies:
            placed, ms = best_time_ms(lambda p=policy: plan(setting, load, p, None), 1)
            placements[policy] = placed
            timings[policy] = min(timings.get(policy, float("inf")), ms)
    rows = []
    for policy in policies:
        bal = placement_balancedness(load, placements[policy], setting.num_gpus)
        moved = int(moved_slots(start, placements[policy], setting.num_gpus).sum())
        rows.append(
            Row(
                setting.name,
                f"zipf-{s}",
                policy.value,
                float(bal.mean()),
                float(bal.min()),
                timings[policy],
                int(moved * expert_bytes),
                optimum,
                at_optimum(load, placements[policy], setting, floor),
                NUM_LAYERS,
            )
        )
    return rows


def run_drift(setting: Setting, loads: list[torch.Tensor], repeats: int, expert_bytes: float) -> list[Row]:
    policies = (setting.baseline, EplbAlgorithm.AUTO)
    prev = {p: plan(setting, loads[0], p, None) for p in policies}
    bal_sum = {p: 0.0 for p in policies}
    worst = {p: 1.0 for p in policies}
    ms_sum = {p: 0.0 for p in policies}
    moved_sum = {p: 0 for p in policies}
    at_opt = {p: 0 for p in policies}
    optimum = 0.0
    for load in loads[1:]:
        floor, step_optimum = ceiling(load, setting)
        optimum += step_optimum
        best = {p: float("inf") for p in policies}
        new: dict[EplbAlgorithm, Placement] = {}
        for _ in range(repeats):
            for policy in policies:
                new[policy], ms = best_time_ms(lambda p=policy, ld=load: plan(setting, ld, p, prev[p]), 1)
                best[policy] = min(best[policy], ms)
        for policy in policies:
            bal = placement_balancedness(load, new[policy], setting.num_gpus)
            bal_sum[policy] += float(bal.mean())
            worst[policy] = min(worst[policy], float(bal.min()))
            ms_sum[policy] += best[policy]
            moved_sum[policy] += int(moved_slots(prev[policy], new[policy], setting.num_gpus).sum())
            at_opt[policy] += at_optimum(load, new[policy], setting, floor)
            prev[policy] = new[policy]
    steps = len(loads) - 1
    return [
        Row(
            setting.name,
            "drift",
            p.value,
            bal_sum[p] / steps,
            worst[p],
            ms_sum[p] / steps,
            int(moved_sum[p] / steps * expert_bytes),
            optimum / steps,
            at_opt[p],
            NUM_LAYERS * steps,
        )
        for p in policies
    ]


def verdict(base: Row, ours: Row) -> str:
    """win / tie-at-optimum / LOSS for one pair of rows (module docstring)."""
    if ours.balancedness_mean > base.balancedness_mean and (
        ours.balancedness_worst_layer >= base.balancedness_worst_layer - 1e-12
    ):
        return "win"
    if (
        abs(ours.balancedness_mean - base.balancedness_mean) <= 1e-12
        and base.layers_at_optimum == base.layers
        and ours.layers_at_optimum == ours.layers
    ):
        return "tie-at-optimum"
    return "LOSS"


def print_table(rows: list[Row]) -> None:
    head = (
        f"{'setting':<14}{'load':<10}{'policy':<14}{'bal mean':>9}{'worst':>8}{'optimum':>9}{'@opt':>9}"
        f"{'plan ms':>9}{'GB moved':>10}   ours/baseline: bal   worst   time   moved"
    )
    print(head)
    print("-" * len(head))
    for i in range(0, len(rows), 2):
        base, ours = rows[i], rows[i + 1]
        for row in (base, ours):
            at_opt = f"{row.layers_at_optimum}/{row.layers}"
            line = (
                f"{row.setting:<14}{row.load:<10}{row.policy:<14}{row.balancedness_mean:>9.4f}"
                f"{row.balancedness_worst_layer:>8.4f}{row.optimum_mean:>9.4f}{at_opt:>9}{row.plan_ms:>9.1f}"
                f"{row.bytes_moved / 1e9:>10.2f}"
            )
            if row is ours:
                moved = ours.bytes_moved / base.bytes_moved if base.bytes_moved else float("nan")
                line += (
                    f"   {ours.balancedness_mean / base.balancedness_mean:>18.4f}"
                    f"{ours.balancedness_worst_layer / base.balancedness_worst_layer:>8.4f}"
                    f"{ours.plan_ms / base.plan_ms:>7.2f}{moved:>8.3f}"
                )
            print(line)
    print()
    for i in range(0, len(rows), 2):
        base, ours = rows[i], rows[i + 1]
        print(f"  {base.setting:<14}{base.load:<10}{verdict(base, ours)}")


def check_targets(rows: list[Row]) -> dict[str, bool]:
    pairs = [(rows[i], rows[i + 1]) for i in range(0, len(rows), 2)]
    decode = [o for _, o in pairs if o.setting.startswith("decode")]
    return {
        "balancedness >= baseline (mean and worst layer, every row)": all(
            o.balancedness_mean >= b.balancedness_mean - 1e-12
            and o.balancedness_worst_layer >= b.balancedness_worst_layer - 1e-12
            for b, o in pairs
        ),
        "balancedness > baseline (mean, every row)": all(
            o.balancedness_mean > b.balancedness_mean for b, o in pairs
        ),
        "every row a win or a tie at the proven optimum": all(verdict(b, o) != "LOSS" for b, o in pairs),
        "decode mean balancedness >= 0.95 (every load)": all(o.balancedness_mean >= 0.95 for o in decode),
        "plan time <= baseline (every row)": all(o.plan_ms <= b.plan_ms for b, o in pairs),
        "plan time <= 100 ms (every row)": all(o.plan_ms <= 100 for _, o in pairs),
        "moved <= half the baseline on drift": all(
            2 * o.bytes_moved <= b.bytes_moved for b, o in pairs if o.load == "drift"
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats and drift steps")
    parser.add_argument("--json", type=Path, help="write the rows and target checks here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    repeats, steps = (3, 4) if args.quick else (7, 9)
    expert_bytes = model_preset(ModelPreset.DEEPSEEK_V3).expert_bytes
    drift = drift_sequence(steps, sigma=0.1, seed=11)
    rows: list[Row] = []
    jobs = [(st, s) for st in SETTINGS for s in (0.6, 1.0, 1.4)] + [(st, None) for st in SETTINGS]
    for done, (setting, s) in enumerate(jobs, 1):
        label = f"zipf-{s}" if s is not None else "drift"
        print(f"[{done}/{len(jobs)}] {setting.name} {label} ...", file=sys.stderr, flush=True)
        if s is None:
            rows += run_drift(setting, drift, repeats, expert_bytes)
        else:
            rows += run_static(setting, s, repeats, expert_bytes)
    print_table(rows)
    targets = check_targets(rows)
    print()
    for name, ok in targets.items():
        print(f"  [{'PASS' if ok else 'MISS'}] {name}")
    if args.json:
        doc = {
            "shape": {"layers": NUM_LAYERS, "experts": NUM_EXPERTS, "groups": NUM_GROUPS},
            "expert_bytes": expert_bytes,
            "quick": args.quick,
            "rows": [asdict(r) for r in rows],
            "targets": targets,
        }
        args.json.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
