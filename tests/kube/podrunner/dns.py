"""Cluster DNS from Services and pods (pure): the records the runner's hosts file serves.

- A headless Service (clusterIP None) resolves to every matching pod with an address: ready ones, or
  all of them with `publishNotReadyAddresses` (KubeRay's head Service, the pools' worker Services).
- A ClusterIP Service has no virtual IP here: it resolves to one ready endpoint (the first by name),
  so it needs `port == targetPort` (a port map would need a proxy); `port_mismatches` lists the
  Services that break that rule, for the runner to report.
- Every pod resolves its own hostname to its address (the kubelet writes it into the pod's
  /etc/hosts), and `<hostname>.<subdomain>.<ns>.svc.cluster.local` when its subdomain names a
  headless Service.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

DOMAIN = "cluster.local"
Obj = Mapping[str, Any]


def _matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _ip(pod: Obj) -> str:
    return str((pod.get("status") or {}).get("podIP") or "")


def _ready(pod: Obj) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or ()
    )


def _live(pod: Obj) -> bool:
    phase = (pod.get("status") or {}).get("phase")
    return (
        bool(_ip(pod))
        and phase not in ("Succeeded", "Failed")
        and not pod["metadata"].get("deletionTimestamp")
    )


def service_names(name: str, namespace: str) -> list[str]:
    return [f"{name}.{namespace}.svc.{DOMAIN}"]


def endpoints(service: Obj, pods: Sequence[Obj]) -> list[Obj]:
    """The pods a Service routes to (its EndpointSlice), ready ones first, by name."""
    spec = service.get("spec") or {}
    ns = service["metadata"]["namespace"]
    matching = [
        p
        for p in pods
        if p["metadata"]["namespace"] == ns
        and _live(p)
        and _matches(spec.get("selector") or {}, p["metadata"].get("labels") or {})
    ]
    if not spec.get("publishNotReadyAddresses"):
        matching = [p for p in matching if _ready(p)]
    return sorted(matching, key=lambda p: (not _ready(p), p["metadata"]["name"]))


def records(services: Iterable[Obj], pods: Sequence[Obj]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    headless: set[tuple[str, str]] = set()
    for svc in services:
        if svc["metadata"].get("deletionTimestamp"):
            continue
        meta, spec = svc["metadata"], svc.get("spec") or {}
        found = endpoints(svc, pods)
        if spec.get("clusterIP") == "None":
            headless.add((meta["namespace"], meta["name"]))
            chosen = found
        else:
            chosen = [p for p in found if _ready(p)][:1]
        for name in service_names(meta["name"], meta["namespace"]):
            out.extend((name, _ip(p)) for p in chosen)
    for pod in pods:
        if not _live(pod):
            continue
        spec = pod.get("spec") or {}
        hostname = str(spec.get("hostname") or pod["metadata"]["name"])[:63]
        out.append((hostname, _ip(pod)))
        sub = spec.get("subdomain")
        if sub and (pod["metadata"]["namespace"], sub) in headless:
            out.append((f"{hostname}.{sub}.{pod['metadata']['namespace']}.svc.{DOMAIN}", _ip(pod)))
    return out


def port_mismatches(services: Iterable[Obj], pods: Sequence[Obj]) -> list[str]:
    """ClusterIP Services whose port differs from the port their endpoint listens on."""
    problems = []
    for svc in services:
        spec = svc.get("spec") or {}
        if spec.get("clusterIP") == "None" or not spec.get("selector"):
            continue
        found = endpoints(svc, pods)
        for port in spec.get("ports") or ():
            target = port.get("targetPort", port.get("port"))
            if isinstance(target, str) and found:
                target = next(
                    (
                        p.get("containerPort")
                        for c in found[0]["spec"].get("containers") or ()
                        for p in c.get("ports") or ()
                        if p.get("name") == target
                    ),
                    target,
                )
            if target != port.get("port"):
                problems.append(
                    f"Service {svc['metadata']['namespace']}/{svc['metadata']['name']} port "
                    f"{port.get('port')} -> {target}"
                )
    return problems
