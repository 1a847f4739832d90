"""Operator benchmark: `python bench/operator.py [--quick] [--json OUT]`.

Runs the emulated API server (tests/kube) in this process, `moeplane operator` as a subprocess
(user `operator`), and a driver playing KubeRay that reports every RayCluster ready as soon as
it appears. Applies N MoEDeployments (DeepSeek-R1 layout) with one `kubectl apply` and measures:

- seconds_to_all_ready: from the apply until every deployment has Ready=True;
- requests_per_reconcile: the operator's API requests (watches excluded) / reconciles it ran;
- steady_state_writes_per_minute: writes (create/update/patch/delete) once all are Ready, over
  several resync intervals (target 0);
- operator_rss_mb: the operator process's resident memory at steady state.

The baseline, measured in the same run, is the same pipeline with one deployment; the table
shows each figure and its ratio to the baseline.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import types
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# This script is named operator.py: never let its folder shadow the standard library's module.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
# tests/ is not an installed package and the repository root cannot go on sys.path (operator/
# would shadow the standard library too): map the `tests` namespace to its folder directly.
_tests = types.ModuleType("tests")
_tests.__path__ = [str(ROOT / "tests")]
sys.modules.setdefault("tests", _tests)

import yaml  # noqa: E402

from tests.kube.cluster import EmulatedCluster  # noqa: E402
from tests.kube.kuberay import KubeRayDriver  # noqa: E402

MOED = ("moeplane.io/v1alpha1", "MoEDeployment")
PROGRESS = "moeplane.io/reconcile"  # kopf's progress record of the `reconcile` handler


@dataclass(frozen=True)
class Result:
    deployments: int
    seconds_to_all_ready: float
    requests_per_reconcile: float
    steady_state_writes_per_minute: float
    operator_rss_mb: float
    operator_requests: int
    reconciles: int


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


_PROBE_MAX_AGE_S = 10.0  # kopf caches probe results this long
_last_probe = [0.0]


def _probe(url: str, fresh: bool = False) -> dict[str, Any]:
    if fresh:
        time.sleep(max(0.0, _last_probe[0] + _PROBE_MAX_AGE_S + 0.5 - time.monotonic()))
    _last_probe[0] = time.monotonic()
    with urllib.request.urlopen(url, timeout=5) as r:
        return dict(json.loads(r.read()))


def _manifests(count: int) -> str:
    base = yaml.safe_load((ROOT / "examples" / "deepseek-r1.yaml").read_text())
    docs = []
    for n in range(count):
        base["metadata"]["name"] = f"bench-{n:03d}"
        docs.append(yaml.safe_dump(base))
    return "---\n".join(docs)


def _ready(cluster: EmulatedCluster) -> int:
    def ready(obj: dict[str, Any]) -> bool:
        return any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in (obj.get("status") or {}).get("conditions") or []
        )

    return sum(ready(o) for o in cluster.list(*MOED, "default"))


def _settled(cluster: EmulatedCluster) -> bool:
    """Steady state: no kopf handler in progress (kopf keeps its progress in `moeplane.io/<handler>`)."""
    objects = cluster.list(*MOED, "default") + cluster.list("moeplane.io/v1alpha1", "MoEPool", "default")
    return not any(PROGRESS in (o["metadata"].get("annotations") or {}) for o in objects)


def run(count: int, resync_s: float, steady_s: float, timeout_s: float) -> Result:
    workdir = Path(tempfile.mkdtemp(prefix="moeplane-bench-operator-"))
    with EmulatedCluster(users=("admin", "operator"), workdir=workdir, log_size=500) as cluster:
        cluster.kubectl("apply", "-f", str(ROOT / "crds"))
        kuberay = KubeRayDriver(cluster)
        kuberay.install_crd()
        kuberay.auto(interval_s=0.2)
        liveness = f"http://127.0.0.1:{_free_port()}/healthz"
        argv = [
            str(Path(sys.executable).parent / "moeplane"),
            "operator",
            "-n",
            "default",
            "--resync-seconds",
            str(resync_s),
            "--wait-seconds",
            "1",
            "--liveness",
            liveness,
        ]
        log = (workdir / "operator.log").open("wb")
        proc = subprocess.Popen(argv, env=cluster.env("operator"), stdout=log, stderr=subprocess.STDOUT)
        try:
            cluster.wait_for(
                lambda: _alive(liveness, proc), timeout_s=60, what="the operator", interval_s=0.3
            )
            start = time.monotonic()
            cluster.kubectl("apply", "-f", "-", input=_manifests(count), timeout_s=300)
            shown = -1
            while (ready := _ready(cluster)) < count:
                if time.monotonic() - start > timeout_s:
                    raise TimeoutError(f"{ready}/{count} deployments Ready after {timeout_s:.0f} s")
                if ready != shown:
                    print(
                        f"  {count} deployments: {ready:3d} Ready after {time.monotonic() - start:5.1f} s",
                        flush=True,
                    )
                    shown = ready
                time.sleep(0.2)
            elapsed = time.monotonic() - start
            print(f"  {count} deployments: {count:3d} Ready after {elapsed:5.1f} s", flush=True)

            settle_start = time.monotonic()
            cluster.wait_for(
                lambda: _settled(cluster),
                timeout_s=timeout_s,
                what="kopf's handlers to finish",
                interval_s=0.5,
            )
            print(
                f"  handlers finished {time.monotonic() - settle_start:.1f} s later; measuring "
                f"{steady_s:g} s of steady state",
                flush=True,
            )
            time.sleep(resync_s)
            writes_before = cluster.request_count("operator", writes_only=True)
            time.sleep(steady_s)
            writes = cluster.request_count("operator", writes_only=True) - writes_before
            requests = sum(n for verb, n in cluster.verb_counts("operator").items() if verb != "watch")
            reconciles = sum(int(v) for v in _probe(liveness, fresh=True).get("reconciles", {}).values())
            return Result(
                deployments=count,
                seconds_to_all_ready=round(elapsed, 2),
                requests_per_reconcile=round(requests / max(reconciles, 1), 3),
                steady_state_writes_per_minute=round(writes * 60.0 / steady_s, 2),
                operator_rss_mb=round(_rss_mb(proc.pid), 1),
                operator_requests=requests,
                reconciles=reconciles,
            )
        finally:
            kuberay.stop()
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()


def _alive(url: str, proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"the operator exited with {proc.returncode}")
    try:
        _probe(url)
        return True
    except OSError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 deployments and a short steady window")
    parser.add_argument("--json", metavar="OUT", help="write the results as JSON")
    parser.add_argument("--deployments", type=int, default=None, help="override the deployment count")
    args = parser.parse_args()
    count = args.deployments or (10 if args.quick else 100)
    resync_s = 5.0
    steady_s = 12.0 if args.quick else 45.0
    print(
        f"operator benchmark: {count} MoEDeployments, resync every {resync_s:g} s, "
        f"steady window {steady_s:g} s"
    )
    print("baseline: 1 deployment")
    baseline = run(1, resync_s, steady_s, timeout_s=120)
    print(f"measured: {count} deployments")
    result = run(count, resync_s, steady_s, timeout_s=600)

    rows = [
        ("seconds_to_all_ready", "s"),
        ("requests_per_reconcile", ""),
        ("steady_state_writes_per_minute", "/min"),
        ("operator_rss_mb", "MB"),
    ]
    print(f"\n{'metric':34} {'baseline (1)':>14} {f'run ({count})':>14} {'ratio':>8}")
    for key, unit in rows:
        base, value = getattr(baseline, key), getattr(result, key)
        ratio = f"{value / base:8.2f}" if base else "       -"
        print(f"{key:34} {f'{base} {unit}':>14} {f'{value} {unit}':>14} {ratio}")
    out = {
        **asdict(result),
        "baseline": asdict(baseline),
        "config": {
            "resync_seconds": resync_s,
            "steady_window_seconds": steady_s,
            "wait_seconds": 1.0,
            "example": "examples/deepseek-r1.yaml",
        },
    }
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0 if result.steady_state_writes_per_minute == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
