"""The pod network shim (`podrunner/podnet.c`): a pod's outgoing connections leave from the pod's
address and take their source ports the way connect() in a pod's own network namespace does.

Linux gives connect() even ephemeral ports and bind(port 0) odd ones, so listeners that bind a
fixed odd port later (Ray's dashboard agent on 52365) do not collide with outgoing connections.
A shim that bound the source with bind(0) took odd ports for every connection of the pod, and on a
busy pod Ray's agent could not listen (seen in the k8s_e2e tier: the head never became ready).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kube.podrunner.sandbox import AddressPool, build_shim

pytestmark = pytest.mark.integration

CLIENT = """
import json, socket, sys
listener = socket.socket()
listener.bind(("0.0.0.0", 0))
listener.listen(64)
port = listener.getsockname()[1]
conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
print(json.dumps({"listen": listener.getsockname()[0],
                  "sources": [c.getsockname() for c in conns]}))
"""


def _run(env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", CLIENT], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_outgoing_connections_leave_from_the_pod_with_connects_ports(tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PODNET_", "LD_PRELOAD"))}
    control = _run(base)  # this kernel's own choice for connect(), outside any pod
    if any(port % 2 for _, port in control["sources"]):
        pytest.skip("this kernel does not give connect() even ports (Linux < 4.6)")
    pod_ip = AddressPool().pod_ip()
    pod = _run({**base, "LD_PRELOAD": str(build_shim(tmp_path)), "PODNET_IP": pod_ip})
    assert pod["listen"] == pod_ip
    assert {ip for ip, _ in pod["sources"]} == {pod_ip}
    odd = [port for _, port in pod["sources"] if port % 2]
    assert not odd, f"source ports reserved as bind(0) would (odd): {odd}"
