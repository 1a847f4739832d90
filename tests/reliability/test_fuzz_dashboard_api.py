"""Fuzzed bodies for the planner dashboard's API (what-if and Apply) over real HTTP, against the
planner service on the emulated API server and a real redis-server: never a 500.

What-if answers 200 or 400 naming the field; Apply without the bearer token is always 401 and
changes nothing; Apply with the token answers 200 or 400 naming the field.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.kube.cluster import EmulatedCluster
from tests.planner import service_harness as harness

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

NAME = "fuzz-r1"
URL = f"/api/deployments/default/{NAME}"
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**40), max_value=2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=10)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=5,
)
KEYS = [
    "ttftMs",
    "itlMs",
    "percentile",
    "predictor",
    "windowSeconds",
    "gpuBudgetNodes",
    "prefillMinReplicas",
    "prefillMaxReplicas",
    "decodeMinReplicas",
    "decodeMaxReplicas",
]
VALUE = st.integers(min_value=-3, max_value=500) | st.floats(min_value=-1, max_value=1e4) | st.just("") | JSON
BODY = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), VALUE, max_size=4) | JSON


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def service(tmp_path_factory: pytest.TempPathFactory, redis_server: Any):
    from tests.kube.cluster import EmulatedCluster as Cluster
    from tests.kube.kuberay import KubeRayDriver
    from tests.kube.plugin import CRDS

    workdir = tmp_path_factory.mktemp("kube")
    with Cluster(users=("admin", "operator", "planner"), workdir=workdir) as cluster:
        cluster.kubectl("apply", "-f", str(CRDS))
        kuberay = KubeRayDriver(cluster)
        kuberay.install_crd()
        harness.install(cluster, harness.r1_manifest(NAME))
        async with harness.started(cluster, redis_server) as (svc, client):
            await harness.wait_for(lambda: ("default", NAME) in svc.deployments)
            yield cluster, client
        kuberay.stop()


def spec_of(cluster: EmulatedCluster) -> dict:
    return cluster.get("moeplane.io/v1alpha1", "MoEDeployment", NAME, "default")["spec"]


async def send(client: Any, path: str, body: object, token: str | None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    resp = await client.post(URL + path, data=json.dumps(body), headers=headers)
    text = await resp.text()
    assert resp.status != 500 and resp.status < 500, (path, body, resp.status, text[:300])
    return resp.status, json.loads(text) if text.startswith("{") else {}


@FUZZ
@given(body=BODY)
async def test_whatif_never_500(service, body: object) -> None:
    _, client = service
    status, answer = await send(client, "/whatif", body, None)
    assert status in (200, 400), (status, answer)
    if status == 400:
        assert isinstance(answer.get("field"), str) and answer.get("error"), answer  # "" is a key too


@FUZZ
@given(body=BODY, token=st.none() | st.sampled_from(["", "nope", harness.TOKEN + "x"]))
async def test_apply_without_the_token_is_401_and_changes_nothing(
    service, body: object, token: str | None
) -> None:
    cluster, client = service
    before = spec_of(cluster)
    status, _ = await send(client, "/apply", body, token)
    assert status == 401
    assert spec_of(cluster) == before


@FUZZ
@given(body=BODY)
async def test_apply_with_the_token_never_500(service, body: object) -> None:
    cluster, client = service
    before = spec_of(cluster)
    status, answer = await send(client, "/apply", body, harness.TOKEN)
    assert status in (200, 400), (status, answer)
    if status == 400:
        assert isinstance(answer.get("field"), str) and answer.get("error"), answer  # "" is a key too
        assert spec_of(cluster) == before  # a refused Apply changes nothing
