"""`moeplane validate` and `moeplane plan`: thin adapters over the pure API core."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from moeplane.api.errors import Problem, SpecInvalid
from moeplane.api.layout import DeploymentLayout, PoolLayout, resolve_layout
from moeplane.api.spec import MoEDeployment, parse_deployment, parse_pool


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("validate", help="check MoEDeployment/MoEPool manifests")
    p.add_argument("-f", "--filename", dest="files", action="append", nargs="+", required=True,
                   metavar="FILE", help="manifest files (multi-document YAML is fine)")
    p.set_defaults(func=cmd_validate)

    p = subparsers.add_parser("plan", help="print the resolved layout of each pool of a MoEDeployment")
    p.add_argument("-f", "--filename", dest="file", required=True, metavar="FILE")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=cmd_plan)


# ---- validate ---------------------------------------------------------------------------------


def _documents(path: str) -> Iterator[tuple[int, object]]:
    """(index, document) of every non-empty YAML document; raises SpecInvalid on unreadable files."""
    try:
        text = Path(path).read_text()
        docs = list(yaml.safe_load_all(text))
    except OSError as err:
        raise SpecInvalid([Problem("(file)", err.strerror or str(err))]) from None
    except yaml.YAMLError as err:
        raise SpecInvalid([Problem("(file)", f"not valid YAML: {err}")]) from None
    for index, doc in enumerate(docs):
        if doc is not None:
            yield index, doc


def _check(doc: object) -> str:
    """Parse and validate one document; returns `Kind/name`."""
    kind = doc.get("kind") if isinstance(doc, dict) else None
    if kind == "MoEDeployment":
        obj: Any = parse_deployment(doc)
    elif kind == "MoEPool":
        obj = parse_pool(doc)
    else:
        raise SpecInvalid([Problem("kind", f"must be MoEDeployment or MoEPool (got {kind!r})")])
    return f"{kind}/{obj.metadata.name or '(unnamed)'}"


def cmd_validate(args: argparse.Namespace) -> int:
    files = [f for group in args.files for f in group]
    bad = 0
    for path in files:
        try:
            docs = list(_documents(path))
        except SpecInvalid as err:
            bad += 1
            _print_problems(path, err)
            continue
        if not docs:
            bad += 1
            print(f"{path}: no documents")
        for index, doc in docs:
            where = path if len(docs) == 1 else f"{path}#{index}"
            try:
                name = _check(doc)
            except SpecInvalid as err:
                bad += 1
                _print_problems(where, err)
            else:
                print(f"{where}: {name} is valid")
    return 1 if bad else 0


def _print_problems(where: str, err: SpecInvalid) -> None:
    count = len(err.problems)
    print(f"{where}: invalid ({count} problem{'s' if count != 1 else ''})")
    for problem in err.problems:
        print(f"  - {problem}")


# ---- plan -------------------------------------------------------------------------------------


def cmd_plan(args: argparse.Namespace) -> int:
    try:
        deployments = [d for _, d in _documents(args.file) if isinstance(d, dict)
                       and d.get("kind") == "MoEDeployment"]
        if not deployments:
            raise SpecInvalid([Problem("kind", "the file holds no MoEDeployment")])
        deployment = parse_deployment(deployments[0])
    except SpecInvalid as err:
        _print_problems(args.file, err)
        return 1
    layout = resolve_layout(deployment.spec)
    if args.json:
        print(json.dumps(plan_json(layout), indent=2))
    else:
        print(plan_table(deployment, layout))
    return 0


def plan_json(layout: DeploymentLayout) -> dict[str, Any]:
    out = layout.model_dump(mode="json")
    out["total_gpus"] = layout.total_gpus
    out["total_nodes"] = layout.total_nodes
    return out


def _gb(value: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value} B"


_COLUMNS: tuple[tuple[str, Any], ...] = (
    ("pool", lambda p: p.role.value),
    ("groups", lambda p: p.groups),
    ("EP", lambda p: p.expert_parallel),
    ("nodes/group", lambda p: p.nodes_per_group),
    ("GPUs/group", lambda p: p.gpus_per_group),
    ("routed/GPU", lambda p: p.routed_experts_per_gpu),
    ("shared/GPU", lambda p: p.shared_experts_per_gpu),
    ("weights/GPU", lambda p: _gb(p.weight_bytes_per_gpu)),
    ("KV tokens/GPU", lambda p: f"{p.kv_tokens_per_gpu:,}"),
    ("GPUs", lambda p: p.total_gpus),
    ("nodes", lambda p: p.total_nodes),
)


def plan_table(deployment: MoEDeployment, layout: DeploymentLayout) -> str:
    pools: list[PoolLayout] = [layout.prefill, layout.decode]
    rows = [[name for name, _ in _COLUMNS]]
    rows += [[str(get(p)) for _, get in _COLUMNS] for p in pools]
    total = ["total"] + [""] * (len(_COLUMNS) - 3) + [str(layout.total_gpus), str(layout.total_nodes)]
    rows.append(total)
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    lines = [
        f"{deployment.metadata.name or '(unnamed)'}: {layout.model} on {layout.gpu} "
        f"({layout.prefill.gpus_per_node} GPUs/node), KV cache {layout.kv_bytes_per_token:,} bytes/token",
    ]
    for row in rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)
