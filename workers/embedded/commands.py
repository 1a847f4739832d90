"""`moeplane up` and `moeplane demo`: the embedded stack as commands (argument handling and signals).

Both start the stack from a MoEDeployment manifest (examples/tiny-cpu.yaml by default), through
its runtime document (`plan.plan_from_deployment`), as a pod of the deployment would. `up`
prints where everything listens and serves until SIGINT (Ctrl-C) or SIGTERM; `demo` drives a
bounded Poisson load, prints the SLA report and exits. Either way the stack is stopped before
the command returns, so no Ray process or redis-server outlives it.

`up` also runs the planner and its dashboard for the manifest's deployment when
`spec.planner.enabled` (unless `--no-planner`); `demo` runs them only with `--planner`, since
scaling mid-run would change what its SLA report measures.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moeplane.api.errors import SpecInvalid
from moeplane.workers.embedded.loadgen import LoadSpec, drive, poisson_schedule
from moeplane.workers.embedded.plan import (
    EmbeddedPlan,
    EmbeddedPlanError,
    load_manifest,
    plan_from_deployment,
)
from moeplane.workers.embedded.planner_host import (
    EmbeddedPlanner,
    dashboard_token,
    read_manifest,
    start_planner,
)
from moeplane.workers.embedded.progress import ProgressBar
from moeplane.workers.embedded.report import format_report, summarize
from moeplane.workers.embedded.stack import EmbeddedStack, StackOptions


def _plan(args: argparse.Namespace) -> EmbeddedPlan:
    path = Path(args.file)
    dep = load_manifest(path)
    return plan_from_deployment(dep, max_model_len=args.max_model_len, manifest_dir=path.parent)


def _say(message: str) -> None:
    print(f"moeplane: {message}", file=sys.stderr, flush=True)


def _on_signals(handler: Callable[[], object]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, handler)


@dataclass(frozen=True)
class PlannerOptions:
    manifest: dict[str, Any]
    port: int  # 0: any free port


def _planner_options(args: argparse.Namespace, default_on: bool) -> PlannerOptions | None:
    """Whether to run the planner, from the flags and the manifest's spec.planner.enabled."""
    manifest = read_manifest(Path(args.file))
    enabled = bool(((manifest.get("spec") or {}).get("planner") or {}).get("enabled", True))
    wanted = bool(getattr(args, "planner", False)) or (default_on and not getattr(args, "no_planner", False))
    if not (enabled and wanted):
        return None
    port = getattr(args, "planner_port", None)
    if port is None:
        port = args.port + 1 if args.port else 0
    return PlannerOptions(manifest, int(port))


async def _start_planner(stack: EmbeddedStack, options: PlannerOptions, host: str) -> EmbeddedPlanner:
    token, generated = dashboard_token()
    _say("starting the planner and its dashboard")
    planner = await start_planner(stack, options.manifest, host, options.port, token)
    if generated:
        # Printed this once only; set MOEPLANE_DASHBOARD_TOKEN to choose it.
        _say(f"dashboard token (for Apply; printed once): {token}")
    return planner


def _planner_lines(planner: EmbeddedPlanner | None) -> list[str]:
    if planner is None:
        return ["  planner      off"]
    return [
        f"  dashboard    {planner.url}/dashboard   (Apply edits the in-memory spec: no CR in embedded mode)",
        f"  planner      {planner.url}/metrics",
    ]


async def _up(
    plan: EmbeddedPlan, options: StackOptions, planner_options: PlannerOptions | None = None
) -> int:
    stack = EmbeddedStack(plan, options)
    planner: EmbeddedPlanner | None = None
    stop = asyncio.Event()
    main = asyncio.current_task()
    assert main is not None
    _on_signals(main.cancel)  # while starting, Ctrl-C abandons the start (which cleans up)
    try:
        await stack.start(_say)
        if planner_options is not None:
            planner = await _start_planner(stack, planner_options, options.host)
        _on_signals(stop.set)  # again: starting Ray may have installed its own handlers
        lines = [
            f"moeplane is up: {plan.served_model} ({plan.arch.name}), deployment {plan.keys.prefix}",
            f"  OpenAI API   {stack.url}/v1   (model {plan.served_model!r}"
            + (", API key required)" if options.api_key else ")"),
            f"  health       {stack.url}/health",
            f"  metrics      {stack.url}/metrics",
            f"  redis        {stack.redis_url}",
            *_planner_lines(planner),
        ]
        lines += [f"  {g.role:<7} group {g.group_id:<10} gRPC {g.address}" for g in stack.groups]
        lines.append("Press Ctrl-C to stop.")
        print("\n".join(lines), flush=True)
        await stop.wait()
        _say("stopping")
    except asyncio.CancelledError:
        _say("interrupted while starting; cleaning up")
    finally:
        if planner is not None:
            await planner.stop()
        await stack.stop()
    _say("stopped")
    return 0


async def _demo(
    plan: EmbeddedPlan,
    options: StackOptions,
    load: LoadSpec,
    json_out: str | None,
    planner_options: PlannerOptions | None = None,
) -> int:
    stack = EmbeddedStack(plan, options)
    planner: EmbeddedPlanner | None = None
    main = asyncio.current_task()
    assert main is not None
    _on_signals(main.cancel)
    try:
        await stack.start(_say)
        if planner_options is not None:
            planner = await _start_planner(stack, planner_options, options.host)
            _say(f"planner dashboard at {planner.url}/dashboard")
        _on_signals(main.cancel)
        arrivals = poisson_schedule(load)
        _say(f"stack up at {stack.url}; sending {load.num_requests} requests, Poisson {load.rate_per_s:g}/s")
        bar = ProgressBar(len(arrivals), "demo")
        results, duration_s = await drive(stack.url, plan.served_model, arrivals, lambda r: bar.update(r.ok))
    except asyncio.CancelledError:
        _say("interrupted; cleaning up")
        return 130
    finally:
        if planner is not None:
            await planner.stop()
        await stack.stop()
    report = summarize(results, duration_s, plan.sla)
    prompts = "/".join(map(str, load.prompt_tokens))
    outputs = "/".join(map(str, load.output_tokens))
    title = (
        f"SLA report: {plan.served_model}, {plan.prefill.num_groups} prefill x EP{plan.prefill.ep_size} + "
        f"{plan.decode.num_groups} decode x EP{plan.decode.ep_size} on the CPU; {load.num_requests} "
        f"requests, Poisson {load.rate_per_s:g}/s, prompts {prompts} tokens, outputs {outputs} tokens"
    )
    print(format_report(report, title), flush=True)
    if json_out:
        Path(json_out).write_text(json.dumps({"load": load.__dict__, **report.to_json()}, indent=2))
    return 1 if report.num_errors else 0


def model_load_error(exc: BaseException) -> ValueError | None:
    """The model's own load error behind `exc` (a rank's, raised through Ray, or the frontend's):
    a missing or bad tensor, shard, checkpoint location, config.json or tokenizer, whose message
    names the file or location. None for anything else."""
    from moeplane.api.hf_config import HFConfigError
    from moeplane.workers.model import CheckpointError
    from moeplane.workers.model.hf_tokenizer import HFTokenizerError
    from moeplane.workers.model.tokenizer import TokenizerError
    from moeplane.workers.model.weights import WeightError

    cause = getattr(exc, "cause", exc)  # ray.exceptions.RayTaskError carries the rank's exception
    kinds = (WeightError, CheckpointError, HFConfigError, HFTokenizerError, TokenizerError)
    return cause if isinstance(cause, kinds) else None


def _run(coro_factory: Callable[[], Coroutine[Any, Any, int]]) -> int:
    try:
        return asyncio.run(coro_factory())
    except (SpecInvalid, EmbeddedPlanError) as exc:
        print(f"moeplane: invalid manifest:\n{exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        cause = model_load_error(exc)
        if cause is None:
            raise
        print(f"moeplane: cannot load the model: {cause}", file=sys.stderr)
        return 1


def _options(args: argparse.Namespace, plan: EmbeddedPlan) -> StackOptions:
    """The stack's options: the flags, and the runtime document's serving limits they leave unset."""
    timeout_s = args.request_timeout or plan.serving.request_timeout_seconds
    return StackOptions(host=args.host, port=args.port, request_timeout_s=timeout_s)


def run_up(args: argparse.Namespace) -> int:
    # `--api-key` or MOEPLANE_API_KEY makes the frontend require the key (demo: never).
    key = args.api_key or os.environ.get("MOEPLANE_API_KEY") or None

    def up() -> Coroutine[Any, Any, int]:
        plan = _plan(args)
        options = dataclasses.replace(_options(args, plan), api_key=key)
        return _up(plan, options, _planner_options(args, default_on=True))

    return _run(up)


def run_demo(args: argparse.Namespace) -> int:
    load = LoadSpec(num_requests=args.requests, rate_per_s=args.rate, seed=args.seed)
    started = time.monotonic()

    def demo() -> Coroutine[Any, Any, int]:
        plan = _plan(args)
        return _demo(plan, _options(args, plan), load, args.json, _planner_options(args, default_on=False))

    code = _run(demo)
    _say(f"demo finished in {time.monotonic() - started:.0f} s")
    return code
