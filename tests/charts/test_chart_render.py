"""The chart lints clean and renders, with the default values and with every values file, into
manifests that pass kubernetes-validate (strict) and keep the secure defaults."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from tests.charts.chartkit import (
    CHART_DIR,
    KUBE_VERSIONS,
    NAMESPACE,
    ROOT,
    Manifest,
    one,
    pick,
    pod_specs,
    render,
    values_file,
    values_files,
)

pytestmark = pytest.mark.unit

SCENARIOS = ["defaults", *values_files()]


def scenario_values(name: str) -> dict[str, Any]:
    return {} if name == "defaults" else values_file(name)


@pytest.fixture(scope="module", params=SCENARIOS)
def scenario(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any], list[Manifest]]:
    values = scenario_values(request.param)
    return request.param, values, render(values)


@pytest.mark.parametrize("name", SCENARIOS)
def test_lints_clean(name: str) -> None:
    report = helm.lint(
        CHART_DIR,
        scenario_values(name),
        strict=True,
        namespace=NAMESPACE,
        kube_version=f"v{KUBE_VERSIONS[-1]}",
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 warning, 3 error
    assert not problems and not report["errors"], problems or report["errors"]


def test_every_manifest_passes_kubernetes_validate(scenario: tuple[str, dict, list[Manifest]]) -> None:
    _, _, manifests = scenario
    for version in KUBE_VERSIONS:
        for m in manifests:
            if m.obj["apiVersion"].startswith("moeplane.io/") or m.obj["apiVersion"].startswith("kopf.dev/"):
                continue  # custom resources: checked against their CRDs elsewhere
            try:
                kubernetes_validate.validate(m.obj, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                path = ".".join(str(p) for p in err.path)
                pytest.fail(
                    f"{m.template}: {m.kind}/{m.name} fails Kubernetes {version} at {path}: {err.message}"
                )


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_the_crds_pass_kubernetes_validate(version: str) -> None:
    for path in sorted((CHART_DIR / "crds").glob("*.yaml")):
        kubernetes_validate.validate(yaml.safe_load(path.read_text()), version, strict=True)


def test_every_container_is_secure_by_default(scenario: tuple[str, dict, list[Manifest]]) -> None:
    _, _, manifests = scenario
    specs = pod_specs(manifests)
    assert specs
    for where, spec in specs:
        pod_ctx = spec.get("securityContext") or {}
        assert pod_ctx.get("runAsNonRoot") is True, where
        assert pod_ctx.get("runAsUser", 0) > 0, where
        assert pod_ctx.get("seccompProfile") == {"type": "RuntimeDefault"}, where
        for container in spec["containers"]:
            ctx = container.get("securityContext") or {}
            assert ctx.get("readOnlyRootFilesystem") is True, f"{where}/{container['name']}"
            assert ctx.get("allowPrivilegeEscalation") is False, f"{where}/{container['name']}"
            assert ctx.get("capabilities") == {"drop": ["ALL"]}, f"{where}/{container['name']}"
            requests = (container.get("resources") or {}).get("requests") or {}
            assert {"cpu", "memory"} <= set(requests), f"{where}/{container['name']} has no requests"
            assert (container.get("resources") or {}).get("limits", {}).get("memory"), where


def test_no_secret_value_outside_secrets(scenario: tuple[str, dict, list[Manifest]]) -> None:
    """Passwords and tokens reach pods through secretKeyRef only; no rendered object but a Secret
    holds one."""
    _, _, manifests = scenario
    import base64

    secrets = [
        base64.b64decode(v).decode()
        for m in pick(manifests, "Secret")
        for v in (m.obj.get("data") or {}).values()
    ]
    for m in manifests:
        if m.kind == "Secret":
            continue
        text = yaml.safe_dump(m.obj)
        for secret in secrets:
            assert secret not in text, f"{m.kind}/{m.name} holds a secret value"


def _env(spec: dict[str, Any], container: str) -> dict[str, dict[str, Any]]:
    found = next(c for c in spec["containers"] if c["name"] == container)
    return {e["name"]: e for e in found.get("env", [])}


def test_default_install() -> None:
    manifests = render()
    op = one(manifests, "Deployment", "moeplane-operator")
    assert op["spec"]["replicas"] == 1
    assert op["spec"]["strategy"] == {"type": "Recreate"}
    container = op["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["args"][:3] == ["operator", "--liveness=http://0.0.0.0:8080/healthz", "--standalone"]
    assert "--image=ghcr.io/moeplane/moeplane-worker:0.1.0" in container["args"]
    assert "--redis-url=$(MOEPLANE_REDIS_URL)" in container["args"]
    assert container["image"] == "ghcr.io/moeplane/moeplane:0.1.0"

    # Redis: a StatefulSet with a password Secret, and every component's URL built from it.
    sts = one(manifests, "StatefulSet", "moeplane-redis")
    redis_env = _env(sts["spec"]["template"]["spec"], "redis")
    assert redis_env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "moeplane-redis-auth",
        "key": "password",
    }
    assert one(manifests, "Secret", "moeplane-redis-auth")["data"]["password"]
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "8Gi"
    for name, container_name in (("moeplane-operator", "operator"), ("moeplane-planner", "planner")):
        env = _env(one(manifests, "Deployment", name)["spec"]["template"]["spec"], container_name)
        assert (
            env["MOEPLANE_REDIS_URL"]["value"]
            == "redis://:$(REDIS_PASSWORD)@moeplane-redis.moeplane.svc:6379/0"
        )
        assert list(env).index("REDIS_PASSWORD") < list(env).index(
            "MOEPLANE_REDIS_URL"
        )  # kubelet expands in order

    # The dashboard: a Service, and its token from a Secret.
    planner_env = _env(
        one(manifests, "Deployment", "moeplane-planner")["spec"]["template"]["spec"], "planner"
    )
    assert planner_env["MOEPLANE_DASHBOARD_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "moeplane-planner-dashboard",
        "key": "token",
    }
    assert len(one(manifests, "Secret", "moeplane-planner-dashboard")["data"]["token"]) > 40
    assert one(manifests, "Service", "moeplane-planner")["spec"]["ports"][0]["targetPort"] == "http"

    # Only moeplane's pods reach Redis (from any namespace) and the worker pods.
    redis_policy = one(manifests, "NetworkPolicy", "moeplane-redis")["spec"]
    assert redis_policy["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "redis"
    assert redis_policy["ingress"] == [
        {
            "from": [
                {
                    "namespaceSelector": {},
                    "podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "moeplane"}},
                }
            ],
            "ports": [{"port": 6379, "protocol": "TCP"}],
        }
    ]
    workers = one(manifests, "NetworkPolicy", "moeplane-workers")
    assert workers["metadata"]["namespace"] == NAMESPACE
    assert workers["spec"]["podSelector"] == {
        "matchExpressions": [{"key": "moeplane.io/pool", "operator": "Exists"}]
    }
    assert workers["spec"]["ingress"] == [
        {"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "moeplane"}}}]}
    ]
    # Every pod the chart runs is one of "moeplane's own pods".
    for where, _ in pod_specs(manifests):
        kind, name = where.split("/")
        obj = one(manifests, kind, name)
        labels = obj["metadata"]["labels"] if kind == "Pod" else obj["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "moeplane", where

    # No peering, no namespaced bindings.
    assert not pick(manifests, "CustomResourceDefinition") and not pick(manifests, "RoleBinding")


def test_external_redis_and_user_secrets() -> None:
    manifests = render(values_file("external-redis.yaml"))
    assert not pick(manifests, "StatefulSet") and not any(
        "redis" in m.name for m in pick(manifests, "NetworkPolicy")
    )
    for name, container_name in (("moeplane-operator", "operator"), ("moeplane-planner", "planner")):
        env = _env(one(manifests, "Deployment", name)["spec"]["template"]["spec"], container_name)
        assert env["MOEPLANE_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {
            "name": "managed-redis",
            "key": "uri",
        }
        assert "REDIS_PASSWORD" not in env
    planner = one(manifests, "Deployment", "moeplane-planner")["spec"]["template"]["spec"]
    assert _env(planner, "planner")["MOEPLANE_DASHBOARD_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "dashboard-token",
        "key": "bearer",
    }
    assert planner["imagePullSecrets"] == [{"name": "registry-example"}]
    assert planner["containers"][0]["image"] == "registry.example.com/ml/moeplane:0.1.0-rc1"
    assert not pick(manifests, "Secret"), "the user's Secrets are used, none is made"
    assert one(manifests, "Service", "moeplane-planner")["spec"]["type"] == "LoadBalancer"


def test_external_redis_url_from_values_goes_through_a_secret() -> None:
    url = "rediss://redis.example.com:6380/2"
    manifests = render({"redis": {"enabled": False, "external": {"url": url}}})
    import base64

    assert base64.b64decode(one(manifests, "Secret", "moeplane-redis-url")["data"]["url"]).decode() == url
    env = _env(one(manifests, "Deployment", "moeplane-operator")["spec"]["template"]["spec"], "operator")
    assert env["MOEPLANE_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "moeplane-redis-url",
        "key": "url",
    }


def test_namespaced_operator_with_peering() -> None:
    manifests = render(values_file("namespaced-peering.yaml"))
    op = one(manifests, "Deployment", "mp-operator")["spec"]["template"]["spec"]
    args = op["containers"][0]["args"]
    assert "--peering=moeplane-prod" in args and "--standalone" not in args
    assert {"--namespace=llm-prod", "--namespace=llm-staging"} <= set(args)
    assert "--liveness=http://0.0.0.0:9090/healthz" in args and "--resync-seconds=60" in args
    assert op["tolerations"][0]["key"] == "node-role.kubernetes.io/control-plane"
    assert _env(op, "operator")["POD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    planner_args = one(manifests, "Deployment", "mp-planner")["spec"]["template"]["spec"]["containers"][0][
        "args"
    ]
    assert {"--namespace=llm-prod", "--namespace=llm-staging"} <= set(planner_args)

    # Namespaced permissions are bound in the served namespaces only.
    bindings = {(m.namespace, m.name) for m in pick(manifests, "RoleBinding")}
    assert bindings == {
        (ns, name)
        for ns in ("llm-prod", "llm-staging")
        for name in ("mp-operator", "mp-planner", "mp-uninstall")
    }
    roles = {(m.namespace, m.name) for m in pick(manifests, "Role")}
    assert roles == bindings
    assert {m.name for m in pick(manifests, "ClusterRoleBinding")} == {"mp-operator-cluster"}

    # Kopf's peering CRDs (kept on uninstall) and one KopfPeering per namespace, as hooks.
    crds = {m.name: m.obj for m in pick(manifests, "CustomResourceDefinition")}
    assert set(crds) == {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
    assert all(c["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep" for c in crds.values())
    peerings = pick(manifests, "KopfPeering")
    assert {(m.namespace, m.name) for m in peerings} == {
        ("llm-prod", "moeplane-prod"),
        ("llm-staging", "moeplane-prod"),
    }
    assert all(m.hook == "post-install,post-upgrade" for m in peerings)

    # The workers' policies follow the served namespaces; the control plane may reach them.
    policies = {m.namespace: m.obj for m in pick(manifests, "NetworkPolicy") if m.name == "mp-workers"}
    assert set(policies) == {NAMESPACE, "llm-prod", "llm-staging"}
    assert policies["llm-prod"]["spec"]["ingress"][1]["from"][0]["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}
    }


def test_minimal_install() -> None:
    manifests = render(values_file("minimal.yaml"))
    assert not [m for m in manifests if "planner" in m.name]
    assert not pick(manifests, "NetworkPolicy")
    sts = one(manifests, "StatefulSet", "moeplane-redis")
    assert "volumeClaimTemplates" not in sts["spec"]
    assert {"name": "data", "emptyDir": {}} in sts["spec"]["template"]["spec"]["volumes"]
    assert _env(sts["spec"]["template"]["spec"], "redis")["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "redis-password",
        "key": "secret",
    }
    assert "maxmemory 200mb" in sts["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert not pick(manifests, "Secret")


def test_notes_say_how_to_reach_the_dashboard_and_apply_an_example() -> None:
    from tests.charts.chartkit import notes

    text = notes()
    assert "kubectl -n moeplane port-forward svc/moeplane-planner 8080:80" in text
    assert "http://127.0.0.1:8080/dashboard" in text
    assert (
        "kubectl -n moeplane get secret moeplane-planner-dashboard -o jsonpath='{.data.token}' | base64 -d"
        in text
    )
    assert "kubectl apply -f examples/deepseek-r1.yaml" in text
    assert (ROOT / "examples" / "deepseek-r1.yaml").exists()
    assert "dashboard" not in notes({"planner": {"enabled": False}})


@pytest.mark.parametrize("name", SCENARIOS)
def test_the_helm_test_pod_checks_the_services_the_chart_makes(name: str) -> None:
    """`helm test` probes the operator's liveness endpoint and the planner's API through the
    Services this chart renders, on the ports and paths the containers serve."""
    values = scenario_values(name)
    manifests = render(values)
    tests = [m for m in manifests if m.hook == "test"]
    assert len(tests) == 1 and tests[0].kind == "Pod"
    pod = tests[0].obj
    assert pod["spec"]["restartPolicy"] == "Never"
    script = pod["spec"]["containers"][0]["args"][0]
    urls = yaml.safe_load(next(line for line in script.splitlines() if line.startswith("urls = "))[7:])
    services = {(m.name, m.namespace): m.obj for m in pick(manifests, "Service")}
    checked = set()
    for url in urls:
        parts = urlsplit(url)
        svc_name, svc_ns = parts.hostname.split(".")[:2]
        svc = services[(svc_name, svc_ns)]
        port = next(p for p in svc["spec"]["ports"] if p["port"] == parts.port)
        workload = next(
            m.obj
            for m in pick(manifests, "Deployment")
            if m.obj["spec"]["selector"]["matchLabels"].items() <= svc["spec"]["selector"].items()
        )
        container = workload["spec"]["template"]["spec"]["containers"][0]
        named = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert port["targetPort"] in named, f"{url}: Service port targets {port['targetPort']}"
        checked.add((container["name"], parts.path))
    expected = {("operator", "/healthz")}
    if values.get("planner", {}).get("enabled", True):
        expected |= {("planner", "/healthz"), ("planner", "/api/deployments")}
    assert checked == expected


@pytest.mark.parametrize("component", ["operator", "planner"])
def test_container_args_parse_with_the_moeplane_cli(
    component: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The chart runs `moeplane <component> ...` (the image's entrypoint is `moeplane`): every
    flag it passes, in every scenario, is one the real command accepts."""
    from moeplane.cli import build_parser

    parser = build_parser()
    subcommands = next(a for a in parser._actions if a.dest == "command").choices
    if component not in subcommands:
        pytest.skip(f"`moeplane {component}` is not registered yet (moeplane/cli.py COMMAND_MODULES)")
    for name in SCENARIOS:
        for m in pick(render(scenario_values(name)), "Deployment"):
            args = m.obj["spec"]["template"]["spec"]["containers"][0]["args"]
            if args[0] != component:
                continue
            try:
                parsed = parser.parse_args(args)
            except SystemExit:
                pytest.fail(f"{name}: `moeplane {' '.join(args[1:])}` is refused: {capsys.readouterr().err}")
            assert parsed.command == component


def test_image_pull_secrets_reach_every_pod_the_operator_makes() -> None:
    """The chart's private-registry recipe: `imagePullSecrets` → the operator's flags → its config →
    every pod it makes (frontend, Ray head and workers)."""
    from moeplane.api.enums import Role
    from moeplane.api.hardware import HardwarePreset
    from moeplane.api.runtime import resolve_runtime
    from moeplane.api.spec import parse_deployment, parse_pool
    from moeplane.operator.builders.frontend import build_frontend_deployment
    from moeplane.operator.builders.pools import build_pool
    from moeplane.operator.builders.raycluster import build_raycluster
    from moeplane.operator.cli import config_from_args

    from moeplane.cli import build_parser

    manifests = render({"imagePullSecrets": ["registry-a", "registry-b"]})
    op = one(manifests, "Deployment", "moeplane-operator")["spec"]["template"]["spec"]
    assert op["imagePullSecrets"] == [{"name": "registry-a"}, {"name": "registry-b"}]
    config = config_from_args(build_parser().parse_args(op["containers"][0]["args"]))
    assert config.image_pull_secrets == ("registry-a", "registry-b")
    dep = parse_deployment(yaml.safe_load((ROOT / "examples" / "tiny-cpu.yaml").read_text()))
    pool = build_pool(dep, "tiny", "default", Role.DECODE, resolve_runtime(dep).pool(Role.DECODE), 1)
    rc = build_raycluster(parse_pool(pool).spec, "tiny-decode", "default", HardwarePreset.CPU, config)
    specs = [
        build_frontend_deployment(dep, "tiny", "default", config)["spec"]["template"]["spec"],
        rc["spec"]["headGroupSpec"]["template"]["spec"],
        rc["spec"]["workerGroupSpecs"][0]["template"]["spec"],
    ]
    for spec in specs:
        assert spec["imagePullSecrets"] == [{"name": "registry-a"}, {"name": "registry-b"}]
