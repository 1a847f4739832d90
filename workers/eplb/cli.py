"""`moeplane eplb-plan`: a placement from a recorded load file (static EPLB), as JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from moeplane.api.enums import EplbAlgorithm
from moeplane.workers.eplb.types import EplbError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eplb-plan",
        help="compute an expert placement from a load file (JSON or .pt of [layers, experts] counts)",
    )
    parser.add_argument("load_file", type=Path, help="recorded expert load, [layers, experts]")
    parser.add_argument("--num-gpus", type=int, required=True, help="EP ranks in one group")
    parser.add_argument("--num-nodes", type=int, default=1, help="nodes per EP group")
    parser.add_argument("--redundant", type=int, default=0, help="redundant expert slots per layer")
    parser.add_argument("--num-groups", type=int, default=1, help="expert groups (DeepSeek-V3: 8)")
    parser.add_argument(
        "--algorithm", choices=[a.value for a in EplbAlgorithm], default=EplbAlgorithm.AUTO.value,
        help="placement algorithm, as spec.eplb.algorithm (default: auto, moeplane's own)",
    )
    parser.add_argument("--out", type=Path, help="write the placement JSON here (default: stdout)")
    parser.set_defaults(func=_plan)


def _plan(args: argparse.Namespace) -> int:
    # torch-backed imports stay here so registering the command costs nothing.
    from moeplane.workers.eplb.codec import placement_to_json
    from moeplane.workers.eplb.metrics import placement_balancedness
    from moeplane.workers.eplb.rebalance import rebalance
    from moeplane.workers.eplb.static import read_load_file

    try:
        load = read_load_file(args.load_file)
        num_physical = load.shape[1] + args.redundant
        placement = rebalance(
            load, num_physical, args.num_groups, args.num_nodes, args.num_gpus, EplbAlgorithm(args.algorithm)
        )
    except EplbError as exc:
        print(f"moeplane eplb-plan: {exc}", file=sys.stderr)
        return 2
    bal = placement_balancedness(load, placement, args.num_gpus)
    doc = placement_to_json(placement) | {
        "balancednessMean": round(float(bal.mean()), 6),
        "balancednessWorstLayer": round(float(bal.min()), 6),
    }
    text = json.dumps(doc)
    if args.out is None:
        print(text)
    else:
        args.out.write_text(text)
        print(
            f"wrote {args.out}: {placement.num_layers} layers x {num_physical} slots, "
            f"balancedness mean {float(bal.mean()):.4f}, worst layer {float(bal.min()):.4f}",
            file=sys.stderr,
        )
    return 0
