"""The pod runner with real processes: addresses, DNS, env and volumes, probes, restarts, shared
PID namespaces, and nothing left behind."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest

from tests.kube.cluster import EmulatedCluster
from tests.kube.podrunner.launch import image_roots_under_tmp
from tests.kube.podrunner.runner import PodRunner
from tests.kube.podrunner_fixtures import TEST_IMAGE, apply, container_status, pod_runner, pods, ready

pytestmark = pytest.mark.integration
__all__ = ["pod_runner"]

# Serves what the pod sees on 0.0.0.0:6379: its env, a mounted file, its hostname and its /tmp.
SERVER = """
import http.server, json, os, socket
open('/tmp/mine', 'w').write(os.environ['HOSTNAME'])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({
            'token': os.environ['TOKEN'], 'pod_ip': os.environ['POD_IP'],
            'mode': open(os.environ['CONFIG'] + '/mode').read(),
            'hostname': socket.gethostname(), 'tmp': sorted(os.listdir('/tmp')),
            'me': socket.gethostbyname(socket.gethostname()),
        }).encode()
        self.send_response(200); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.HTTPServer(('0.0.0.0', 6379), H).serve_forever()
"""

# A Job pod that reaches every endpoint of the headless Service by name.
CLIENT = """
import json, socket, urllib.request
ips = sorted({a[4][0] for a in socket.getaddrinfo('echo', 6379, type=socket.SOCK_STREAM)})
seen = [json.loads(urllib.request.urlopen(f'http://{ip}:6379/', timeout=10).read()) for ip in ips]
assert len(ips) == 2 and sorted(s['pod_ip'] for s in seen) == ips, (ips, seen)
print('reached', ips)
"""


def test_pods_get_their_own_address_env_volumes_and_dns(
    kube_cluster: EmulatedCluster, pod_runner: PodRunner
) -> None:
    labels = {"app": "echo"}
    apply(
        kube_cluster,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "creds"},
            "stringData": {"token": "s3cret"},
        },
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"mode": "fast"}},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "echo"},
            "spec": {"clusterIP": "None", "selector": labels, "ports": [{"port": 6379}]},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "echo"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "terminationGracePeriodSeconds": 2,
                        "containers": [
                            {
                                "name": "srv",
                                "image": TEST_IMAGE,
                                "command": ["python", "-c", SERVER],
                                "env": [
                                    {
                                        "name": "TOKEN",
                                        "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}},
                                    },
                                    {
                                        "name": "POD_IP",
                                        "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
                                    },
                                    {"name": "CONFIG", "value": "/etc/echo/config"},
                                ],
                                "ports": [{"name": "redis", "containerPort": 6379}],
                                "readinessProbe": {
                                    "httpGet": {"path": "/", "port": "redis"},
                                    "periodSeconds": 1,
                                },
                                "volumeMounts": [{"name": "cfg", "mountPath": "/etc/echo/config"}],
                            }
                        ],
                        "volumes": [{"name": "cfg", "configMap": {"name": "cfg"}}],
                    },
                },
            },
        },
    )
    found = pod_runner.wait_for(
        lambda: (
            [p for p in pods(kube_cluster, selector="app=echo") if ready(p)]
            if len([p for p in pods(kube_cluster, selector="app=echo") if ready(p)]) == 2
            else None
        ),
        90,
        "two ready echo pods",
    )
    ips = sorted(p["status"]["podIP"] for p in found)
    assert ips[0] != ips[1] and all(ip.startswith("127.") for ip in ips)
    for p in found:
        # Both listen on 6379 (a wildcard bind each), on their own address.
        with urllib.request.urlopen(f"http://{p['status']['podIP']}:6379/", timeout=10) as resp:
            seen = json.loads(resp.read())
        assert seen["token"] == "s3cret" and seen["mode"] == "fast" and seen["pod_ip"] == p["status"]["podIP"]
        assert seen["hostname"] == p["metadata"]["name"] and seen["me"] == p["status"]["podIP"]
        # The container's own /tmp: its file, and the checkout where that lies under /tmp (a CI
        # clone: the "image's" files stay visible, launch.image_binds).
        image = [r.parts[2] for r in image_roots_under_tmp()]
        assert seen["tmp"] == sorted(["mine", *image])
    apply(
        kube_cluster,
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "client"},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [
                            {"name": "c", "image": TEST_IMAGE, "command": ["python", "-c", CLIENT]}
                        ],
                    }
                },
            },
        },
    )
    pod_runner.wait_for(
        lambda: any(
            c["type"] == "Complete"
            for c in (kube_cluster.get("batch/v1", "Job", "client").get("status") or {}).get("conditions")
            or ()
        ),
        90,
        "the client Job to complete",
    )
    client = pods(kube_cluster, selector="job-name=client")[0]
    assert "reached" in pod_runner.logs("default", client["metadata"]["name"], "c")


def test_readiness_follows_an_exec_probe_inside_the_container(
    kube_cluster: EmulatedCluster, pod_runner: PodRunner
) -> None:
    # The probe runs in the container's own mount namespace: it sees the container's /tmp.
    apply(
        kube_cluster,
        pod_doc(
            "slow",
            [
                {
                    "name": "main",
                    "image": TEST_IMAGE,
                    "command": ["sh", "-c", "sleep 3; touch /tmp/ready; exec sleep 1000"],
                    "readinessProbe": {"exec": {"command": ["test", "-f", "/tmp/ready"]}, "periodSeconds": 1},
                }
            ],
        ),
    )
    pod_runner.wait_for(
        lambda: pods(kube_cluster) and container_status(pods(kube_cluster)[0], "main").get("started"),
        60,
        "the container to start",
    )
    assert not ready(pods(kube_cluster)[0])  # not before the file exists
    pod_runner.wait_for(lambda: ready(pods(kube_cluster)[0]), 60, "the probe to pass")


def test_exits_restart_per_policy_with_back_off(kube_cluster: EmulatedCluster, pod_runner: PodRunner) -> None:
    apply(
        kube_cluster,
        pod_doc("crash", [{"name": "main", "image": TEST_IMAGE, "command": ["sh", "-c", "exit 3"]}]),
    )

    def restarted() -> dict[str, Any] | None:
        found = pods(kube_cluster)
        status = container_status(found[0], "main") if found else {}
        return status if status.get("restartCount", 0) >= 1 else None

    status = pod_runner.wait_for(restarted, 60, "a restart")
    assert status["lastState"]["terminated"]["exitCode"] == 3
    assert status["lastState"]["terminated"]["reason"] == "Error"
    assert status["state"].get("waiting", {}).get("reason") in ("CrashLoopBackOff", None)
    apply(
        kube_cluster,
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "fails"},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "c", "image": TEST_IMAGE, "command": ["sh", "-c", "exit 1"]}],
                    }
                },
            },
        },
    )
    pod_runner.wait_for(
        lambda: any(
            c["type"] == "Failed" and c.get("reason") == "BackoffLimitExceeded"
            for c in (kube_cluster.get("batch/v1", "Job", "fails").get("status") or {}).get("conditions")
            or ()
        ),
        60,
        "the Job to fail",
    )


# Exit 0 when this container can see a process running `sleep 4242` (the other container's).
SEES_4242 = (
    "import os, sys\n"
    "def cmd(p):\n"
    "    try:\n"
    "        return open(f'/proc/{p}/cmdline', 'rb').read()\n"
    "    except OSError:\n"
    "        return b''\n"
    "sys.exit(0 if any(cmd(p) == b'sleep\\x004242\\x00' for p in os.listdir('/proc') if p.isdigit()) else 1)"
)


def test_a_shared_process_namespace_shows_the_other_containers(
    kube_cluster: EmulatedCluster, pod_runner: PodRunner
) -> None:
    containers = [
        {"name": "a", "image": TEST_IMAGE, "command": ["sleep", "4242"]},
        {
            "name": "b",
            "image": TEST_IMAGE,
            "command": ["sleep", "1000"],
            "readinessProbe": {"exec": {"command": ["python", "-c", SEES_4242]}, "periodSeconds": 1},
        },
    ]
    apply(
        kube_cluster, pod_doc("shared", containers, shareProcessNamespace=True), pod_doc("apart", containers)
    )
    pod_runner.wait_for(
        lambda: ready(kube_cluster.get("v1", "Pod", "shared")), 60, "the shared pod to be ready"
    )
    apart = kube_cluster.get("v1", "Pod", "apart")
    assert container_status(apart, "b")["started"] and not ready(apart)  # b cannot see a's sleep


def test_deleting_pods_and_stopping_the_runner_leave_no_process(
    kube_cluster: EmulatedCluster, pod_runner: PodRunner
) -> None:
    # PID 1 ignores SIGTERM and leaves a detached grandchild: the grace period ends it all.
    stubborn = {
        "name": "main",
        "image": TEST_IMAGE,
        "command": ["sh", "-c", "trap '' TERM; setsid sleep 1001 & sleep 1002 & wait"],
    }
    apply(
        kube_cluster,
        pod_doc("stubborn", [stubborn], terminationGracePeriodSeconds=1),
        pod_doc("kept", [{"name": "main", "image": TEST_IMAGE, "command": ["sleep", "1003"]}]),
    )
    uid = pod_runner.wait_for(
        lambda: _running_uid(kube_cluster, pod_runner, "stubborn"), 60, "stubborn to run"
    )
    assert len(pod_runner.processes(uid)) >= 3
    kube_cluster.kubectl("delete", "pod", "stubborn", "--wait=true", "--timeout=60s")
    assert pod_runner.processes(uid) == []
    pod_runner.wait_for(lambda: _running_uid(kube_cluster, pod_runner, "kept"), 60, "kept to run")
    # The fixture stops the runner and checks that no process of "kept" outlives it.


def _running_uid(cluster: EmulatedCluster, runner: PodRunner, name: str) -> str | None:
    pod = cluster.find("v1", "Pod", name)
    if pod is None or not container_status(pod, "main").get("started"):
        return None
    uid = str(pod["metadata"]["uid"])
    return uid if runner.processes(uid) else None


def pod_doc(name: str, containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"terminationGracePeriodSeconds": 2, **spec, "containers": containers},
    }


IN_CLUSTER = """
from kubernetes import client, config
config.load_incluster_config()
namespace = open('/var/run/secrets/kubernetes.io/serviceaccount/namespace').read()
pods = client.CoreV1Api().list_namespaced_pod(namespace)
print('pods', sorted(p.metadata.name for p in pods.items))
"""


def test_pods_reach_the_api_server_with_their_service_account(
    kube_cluster: EmulatedCluster, pod_runner: PodRunner
) -> None:
    # The ServiceAccount admission plugin's token volume, the kubernetes Service's env, and the CA:
    # what the Python client's in-cluster configuration (and kopf, and kubectl) read.
    apply(
        kube_cluster,
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "lister"},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [
                            {"name": "c", "image": TEST_IMAGE, "command": ["python", "-c", IN_CLUSTER]}
                        ],
                    }
                },
            },
        },
    )
    pod_runner.wait_for(
        lambda: any(
            c["type"] in ("Complete", "Failed")
            for c in (kube_cluster.get("batch/v1", "Job", "lister").get("status") or {}).get("conditions")
            or ()
        ),
        90,
        "the lister Job to finish",
    )
    pod = pods(kube_cluster, selector="job-name=lister")[0]
    logs = pod_runner.logs("default", pod["metadata"]["name"], "c")
    assert f"pods ['{pod['metadata']['name']}']" in logs, logs
    assert pod["spec"]["serviceAccountName"] == "default"
    assert any(v["name"].startswith("kube-api-access-") for v in pod["spec"]["volumes"])
    assert ("list", "", "pods") in kube_cluster.rbac_seen("system:serviceaccount:default:default")
