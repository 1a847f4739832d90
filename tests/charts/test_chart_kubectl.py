"""The rendered chart applies to the emulated API server with the real kubectl, and the
quickstart's cluster commands work against it (README: Kubernetes quickstart).

`helm install` applies the chart's crds/ first, then the rendered objects in Helm's install order,
then post-install hooks; these tests do the same with kubectl (the emulator cannot decode the
protobuf bodies the Helm SDK sends for built-in kinds). Deployments cannot run here: no kubelet,
no images; what a real cluster adds is marked in the quickstart.
"""

from __future__ import annotations

import base64
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from moeplane.api.enums import Role
from moeplane.api.runtime import resolve_runtime
from moeplane.api.spec import parse_deployment

from tests.charts.chartkit import (
    CHART_DIR,
    NAMESPACE,
    ROOT,
    Manifest,
    grants,
    install_order,
    pick,
    render,
    to_yaml,
    values_file,
    values_files,
)
from tests.kube.cluster import EmulatedCluster

pytestmark = pytest.mark.integration

EXAMPLE = ROOT / "examples" / "deepseek-r1.yaml"


def namespace_doc(name: str) -> str:
    return yaml.safe_dump({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


def helm_install(cluster: EmulatedCluster, values: dict[str, Any]) -> list[Manifest]:
    """What `helm install moeplane charts/moeplane -n moeplane --create-namespace` sends."""
    manifests = render(values)
    namespaces = {NAMESPACE} | {m.namespace for m in manifests if m.namespace}
    cluster.kubectl("apply", "-f", "-", input="---\n".join(namespace_doc(ns) for ns in sorted(namespaces)))
    cluster.kubectl("apply", "-f", str(CHART_DIR / "crds"))
    cluster.kubectl("apply", "-f", "-", input=to_yaml(install_order(manifests)))
    hooks = [m for m in manifests if m.hook and "post-install" in m.hook]
    if hooks:
        cluster.kubectl("apply", "-f", "-", input=to_yaml(hooks))
    return manifests


def run_moeplane(cluster: EmulatedCluster, args: list[str], user: str) -> subprocess.CompletedProcess[str]:
    """`moeplane ARGS` as a pod or a user runs it, with `user`'s kubeconfig."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "moeplane"), *args],
        env=cluster.env(user), capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def helm_uninstall(cluster: EmulatedCluster, manifests: list[Manifest]) -> subprocess.CompletedProcess[str]:
    """What `helm uninstall moeplane -n moeplane` does: the pre-delete hooks in weight order (their
    ServiceAccount and RBAC, then the Job, whose command runs here as the hook's ServiceAccount,
    user `uninstall`); when the Job succeeds, the hooks and then the release's objects are deleted."""
    hooks = sorted(
        (m for m in manifests if m.hook and "pre-delete" in m.hook),
        key=lambda m: int(m.obj["metadata"]["annotations"].get("helm.sh/hook-weight", "0")),
    )
    rest = [m for m in hooks if m.kind != "Job"]
    if rest:
        cluster.kubectl("apply", "-f", "-", input=to_yaml(rest))
    done = subprocess.CompletedProcess([], 0, "", "")
    for job in (m for m in hooks if m.kind == "Job"):
        container = job.obj["spec"]["template"]["spec"]["containers"][0]
        done = run_moeplane(cluster, container["args"], "uninstall")
        if done.returncode != 0:
            return done  # Helm stops the uninstall; the failed hook's objects stay
    if rest:  # the Job ran here, not as a Job object (the emulator serves no batch/v1)
        cluster.kubectl("delete", "-f", "-", input=to_yaml(rest))
    release = [m for m in manifests if m.hook is None and m.kind != "MoEDeployment"]
    cluster.kubectl("delete", "-f", "-", input=to_yaml(list(reversed(install_order(release)))))
    return done


def stored(cluster: EmulatedCluster, m: Manifest) -> dict[str, Any] | None:
    namespaced = cluster.resource(m.obj["apiVersion"], m.kind).namespaced
    return cluster.find(m.obj["apiVersion"], m.kind, m.name, m.namespace if namespaced else None)


@pytest.mark.parametrize("name", ["defaults", *values_files()])
def test_the_rendered_chart_applies(kube_cluster: EmulatedCluster, name: str) -> None:
    values = {} if name == "defaults" else values_file(name)
    manifests = helm_install(kube_cluster, values)
    for m in manifests:
        if m.hook == "test" or (m.hook and "pre-delete" in m.hook):
            continue  # run by `helm test` (needs a kubelet) or by `helm uninstall`
        live = stored(kube_cluster, m)
        assert live is not None, f"{m.kind}/{m.name} was not created"
        assert live.get("spec", live.get("data", live.get("rules"))) == m.obj.get(
            "spec", m.obj.get("data", m.obj.get("rules"))
        ), f"{m.kind}/{m.name} differs"
    # An upgrade with the same values changes nothing.
    again = kube_cluster.kubectl("apply", "-f", "-", input=to_yaml(install_order(manifests))).stdout
    assert again.strip() and all(line.endswith(" unchanged") for line in again.strip().splitlines()), again


def test_quickstart_against_the_emulated_cluster(kube_cluster: EmulatedCluster) -> None:
    cluster = kube_cluster
    # 2. helm install (a tiny deployment rides along in values, through the CRD's schema and CEL).
    tiny = yaml.safe_load((ROOT / "examples" / "tiny-cpu.yaml").read_text())
    manifests = helm_install(cluster, {"deployments": [{"name": "tiny", "spec": tiny["spec"]}]})
    assert cluster.find("moeplane.io/v1alpha1", "MoEDeployment", "tiny", NAMESPACE) is not None

    # 3-4. kubectl apply -f examples/deepseek-r1.yaml; kubectl get moed
    cluster.kubectl("apply", "-f", str(EXAMPLE))
    assert cluster.kubectl("get", "moed").stdout.splitlines()[1].split()[0] == "deepseek-r1"
    table = cluster.kubectl("get", "moed", "-A").stdout.splitlines()
    assert table[0].split()[:5] == ["NAMESPACE", "NAME", "MODEL", "GPU", "PREFILL-EP"]
    rows = {line.split()[1]: line.split() for line in table[1:]}
    assert rows["deepseek-r1"][2:5] == ["deepseek-r1", "h800", "32"]
    assert rows["tiny"][0] == NAMESPACE

    # A bad manifest is refused by the CRD's schema, with the field named.
    bad = yaml.safe_load(EXAMPLE.read_text())
    bad["metadata"]["name"] = "bad"
    bad["spec"]["kvTransfer"]["chunkBytes"] = 4096
    refused = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(bad), check=False)
    assert refused.returncode != 0 and "spec.kvTransfer.chunkBytes" in refused.stderr, refused.stderr

    # 5. The dashboard's token, as NOTES.txt and the README fetch it (the port-forward needs pods).
    token = cluster.kubectl(
        "-n", NAMESPACE, "get", "secret", "moeplane-planner-dashboard", "-o", "jsonpath={.data.token}"
    ).stdout
    rendered = next(m for m in manifests if m.kind == "Secret" and m.name == "moeplane-planner-dashboard")
    assert token == rendered.obj["data"]["token"] and len(base64.b64decode(token)) == 32

    # 6. kubectl scale moepool/deepseek-r1-decode --replicas=2, on the pool the operator makes
    # (built here with the operator's own builder; no operator runs in this test).
    from moeplane.operator.builders.pools import build_pool

    deployment = parse_deployment(yaml.safe_load(EXAMPLE.read_text()))
    pool = build_pool(
        deployment, "deepseek-r1", "default", Role.DECODE, resolve_runtime(deployment).pool(Role.DECODE), 1
    )
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(pool), user="operator")
    assert pool["metadata"]["name"] == "deepseek-r1-decode"
    cluster.kubectl("scale", "moepool/deepseek-r1-decode", "--replicas=2")
    assert cluster.get("moeplane.io/v1alpha1", "MoEPool", "deepseek-r1-decode")["spec"]["replicas"] == 2
    header, row = cluster.kubectl("get", "moepools").stdout.splitlines()
    columns = dict(zip(header.split(), row.split(), strict=False))
    assert columns["NAME"] == "deepseek-r1-decode" and columns["EP"] == "144"
    assert columns["NODES/GROUP"] == "18" and columns["DESIRED"] == "2"

    # 7. helm uninstall: the pre-delete hook deletes every MoEDeployment first (no operator runs
    # here, so none holds a finalizer), then the release's objects go; Helm keeps the CRDs.
    done = helm_uninstall(cluster, manifests)
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) >= {"moeplane/tiny:", "default/deepseek-r1:"}
    for m in manifests:
        if m.kind != "Job" and m.hook != "test":  # Jobs and the test Pod never ran here
            assert stored(cluster, m) is None, f"{m.kind}/{m.name} survived the uninstall"
    assert not cluster.list("moeplane.io/v1alpha1", "MoEDeployment")
    cluster.kubectl("delete", "crd", "moedeployments.moeplane.io", "moepools.moeplane.io")
    assert not cluster.list("apiextensions.k8s.io/v1", "CustomResourceDefinition")


def test_planner_writes_through_kubectl_are_granted(kube_cluster: EmulatedCluster) -> None:
    """The planner's two writes — the dashboard's Apply (a merge patch of the spec) and scaling a
    pool through /scale — made under the planner's identity, as the emulator records them for
    RBAC, are all granted to the planner's ServiceAccount by the chart."""
    cluster = kube_cluster
    manifests = helm_install(cluster, {})
    cluster.kubectl("apply", "-f", str(EXAMPLE))
    from moeplane.operator.builders.pools import build_pool

    deployment = parse_deployment(yaml.safe_load(EXAMPLE.read_text()))
    pool = build_pool(
        deployment, "deepseek-r1", "default", Role.PREFILL, resolve_runtime(deployment).pool(Role.PREFILL), 1
    )
    cluster.apply_object(pool)

    cluster.kubectl("get", "moedeployments", "--all-namespaces", "-o", "json", user="planner")
    patch = {"spec": {"sla": {"ttftMs": 1500}}}
    cluster.kubectl(
        "patch", "moedeployment", "deepseek-r1", "--type=merge", "-p", json.dumps(patch), user="planner"
    )
    cluster.kubectl("scale", "moepool/deepseek-r1-prefill", "--replicas=3", user="planner")
    assert (
        cluster.get("moeplane.io/v1alpha1", "MoEDeployment", "deepseek-r1")["spec"]["sla"]["ttftMs"] == 1500
    )
    assert cluster.get("moeplane.io/v1alpha1", "MoEPool", "deepseek-r1-prefill")["spec"]["replicas"] == 3

    seen = cluster.rbac_seen("planner")
    assert ("patch", "moeplane.io", "moepools/scale") in seen
    missing = sorted(seen - grants(manifests, "planner"))
    assert not missing, f"the planner's ClusterRole lacks {missing}"
    # The operator's role cannot do the planner's scaling (each component has its own account).
    assert ("patch", "moeplane.io", "moepools/scale") not in grants(manifests, "operator")
    assert (
        not pick(manifests, "ClusterRoleBinding", "moeplane-planner")[0]
        .obj["subjects"][0]["name"]
        .endswith("operator")
    )


def quickstart_section() -> str:
    """The README's Kubernetes quickstart section."""
    for path in (ROOT / "README.md",):
        text = path.read_text()
        if "## Kubernetes quickstart" in text:
            section = text.split("## Kubernetes quickstart", 1)[1]
            return section.split("\n## ", 1)[0]
    raise AssertionError("no '## Kubernetes quickstart' section in README.md")


MARKS = ("needs a real cluster", "needs Docker")


def quickstart_commands() -> list[tuple[str, bool]]:
    """(command, marked as needing a real cluster or Docker) for every command line shown."""
    out = []
    for block in re.findall(r"```sh\n(.*?)```", quickstart_section(), re.S):
        block_marked = any(block.lstrip().startswith(f"# {mark}") for mark in MARKS)
        for line in block.splitlines():
            code, _, comment = line.partition("#")
            if code.strip():
                out.append((code.strip(), block_marked or any(mark in comment for mark in MARKS)))
    return out


def test_every_quickstart_command_runs_or_is_marked(kube_cluster: EmulatedCluster) -> None:
    """Runs the quickstart's commands, in order, as written; `helm install`/`uninstall` as what
    they send. After a MoEDeployment is applied the test creates its pools as the operator would."""
    cluster = kube_cluster
    commands = quickstart_commands()
    assert len(commands) >= 10
    manifests: list[Manifest] = []
    ran = []
    for command, marked in commands:
        if marked:
            continue
        argv = shlex.split(command.split("|")[0])
        if argv[:3] == ["helm", "install", "moeplane"]:
            assert argv[3:] == ["charts/moeplane", "-n", NAMESPACE, "--create-namespace"], command
            manifests = helm_install(cluster, {})
        elif argv[:3] == ["helm", "uninstall", "moeplane"]:
            assert argv[3:] == ["-n", NAMESPACE], command
            done = helm_uninstall(cluster, manifests)
            assert done.returncode == 0, done.stderr
            assert not cluster.list("moeplane.io/v1alpha1", "MoEDeployment")
        elif argv[:2] == [".venv/bin/moeplane", "cleanup"]:
            done = run_moeplane(cluster, argv[1:], "admin")
            assert done.returncode == 0, done.stderr
        elif argv[0] == "kubectl":
            args = [str(ROOT / a) if (ROOT / a).exists() and "/" in a else a for a in argv[1:]]
            out = cluster.kubectl(*args).stdout
            if "|" in command:
                assert command.split("|", 1)[1].split() == ["base64", "-d"], command
                assert base64.b64decode(out), command
            if args[:2] == ["apply", "-f"] and args[2].endswith(".yaml"):
                play_operator(cluster, Path(args[2]))
        else:
            pytest.fail(f"quickstart command neither run by the tests nor marked {MARKS}: {command}")
        ran.append(command)
    assert any(c.startswith("helm install") for c in ran) and any(c.startswith("kubectl scale") for c in ran)
    assert any(c.startswith("helm uninstall") for c in ran) and any("moeplane cleanup" in c for c in ran)
    assert not cluster.list("apiextensions.k8s.io/v1", "CustomResourceDefinition")  # the last step ran


def play_operator(cluster: EmulatedCluster, manifest: Path) -> None:
    """Create the MoEPools of every MoEDeployment in `manifest`, with the operator's builder."""
    from moeplane.operator.builders.pools import build_pool

    for doc in yaml.safe_load_all(manifest.read_text()):
        if not doc or doc.get("kind") != "MoEDeployment":
            continue
        deployment = parse_deployment(doc)
        name, namespace = doc["metadata"]["name"], doc["metadata"].get("namespace", "default")
        document = resolve_runtime(deployment, namespace=namespace)
        for role in Role:
            pool = build_pool(
                deployment, name, namespace, role, document.pool(role),
                replicas=deployment.spec.pool(role).replicas,
            )
            cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(pool), user="operator")


def test_uninstall_completes_while_the_operator_runs_and_cleanup_without_one(
    kube_cluster: EmulatedCluster, kuberay: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's order with an operator running: the pre-delete hook deletes the MoEDeployments,
    the operator's finalizer completes, the hook returns and the release goes. A MoEDeployment left
    with the finalizer and no operator: the hook fails in bounded time naming it, and `moeplane
    cleanup -n NS NAME` removes it."""
    from moeplane.operator.config import OperatorConfig

    from tests.operator.harness import FAST, operator_in_thread

    cluster = kube_cluster
    values = {"uninstall": {"timeoutSeconds": 60}}
    manifests = helm_install(cluster, values)
    tiny = yaml.safe_load((ROOT / "examples" / "tiny-cpu.yaml").read_text())
    with operator_in_thread(cluster, OperatorConfig(**FAST), monkeypatch):
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(tiny))
        cluster.wait_for(
            lambda: len(kuberay.rayclusters("default")) == 2
            and cluster.get("moeplane.io/v1alpha1", "MoEDeployment", "tiny")["metadata"].get("finalizers"),
            what="the operator to take the deployment",
        )
        done = helm_uninstall(cluster, manifests)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "default/tiny: deleted"
        assert not cluster.list("moeplane.io/v1alpha1", "MoEDeployment")
        assert not cluster.list("moeplane.io/v1alpha1", "MoEPool")
    # The hook's own account needed only what its Role grants.
    seen = cluster.rbac_seen("uninstall")
    hook_roles = [m for m in manifests if m.kind in ("ClusterRole", "Role") and m.name.endswith("-uninstall")]
    granted = {c for m in hook_roles for c in expand_rules(m.obj["rules"])}
    assert seen and seen <= granted, (seen, granted)

    # No operator any more: a MoEDeployment with the operator's finalizer cannot go by itself.
    stuck = {**tiny, "metadata": {**tiny["metadata"], "name": "stuck", "finalizers": ["moeplane.io/cleanup"]}}
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(stuck))
    cluster.kubectl("delete", "moed", "stuck", "--wait=false")
    hook = next(m for m in manifests if m.kind == "Job")
    args = [a for a in hook.obj["spec"]["template"]["spec"]["containers"][0]["args"] if "timeout" not in a]
    failed = run_moeplane(cluster, [*args, "--timeout-seconds=2"], "admin")
    assert failed.returncode == 1
    assert "default/stuck" in failed.stderr and "moeplane cleanup -n" in failed.stderr
    done = run_moeplane(cluster, ["cleanup", "-n", "default", "stuck"], "admin")
    assert done.returncode == 0 and done.stdout.strip() == "default/stuck: deleted", done.stderr
    assert cluster.find("moeplane.io/v1alpha1", "MoEDeployment", "stuck") is None


def expand_rules(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    from tests.charts.chartkit import expand

    return expand(rules)


def test_the_uninstall_hook_is_ordered_and_cleaned_up() -> None:
    for values in ({}, values_file("namespaced-peering.yaml")):
        hooks = [m for m in render(values) if m.hook == "pre-delete"]
        weights = {m.kind: int(m.obj["metadata"]["annotations"]["helm.sh/hook-weight"]) for m in hooks}
        assert weights["Job"] > max(w for k, w in weights.items() if k != "Job")
        for m in hooks:
            policy = m.obj["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
            assert policy == "before-hook-creation,hook-succeeded", m.name
        job = next(m.obj for m in hooks if m.kind == "Job")
        spec = job["spec"]["template"]["spec"]
        assert spec["serviceAccountName"] == next(m.name for m in hooks if m.kind == "ServiceAccount")
        namespaces = (values.get("operator") or {}).get("namespaces") or []
        assert [a for a in spec["containers"][0]["args"] if a.startswith("--namespace=")] == [
            f"--namespace={ns}" for ns in namespaces
        ]
        # Namespaced operators: the hook may delete in the served namespaces only.
        kinds = {m.kind for m in hooks}
        assert ("Role" in kinds) == bool(namespaces) and ("ClusterRole" in kinds) == (not namespaces)
    assert not [m for m in render({"uninstall": {"deleteDeployments": False}}) if m.hook == "pre-delete"]
