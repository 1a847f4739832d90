"""The Deployment and Job controllers, reduced to what a test cluster needs (pure decisions).

Deployment (pkg/controller/deployment): pods carry `pod-template-hash`; a changed template rolls
with RollingUpdate (maxSurge 25% rounded up, maxUnavailable 25% rounded down, by default) or
Recreate; scale-down removes unready pods first, then the newest. The pods are owned by the
Deployment itself: the emulated API server serves no ReplicaSets, and nothing here reads them.
Job (pkg/controller/job): `parallelism` pods at a time until `completions` succeed; more than
`backoffLimit` failures fail the Job (BackoffLimitExceeded).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]
TEMPLATE_HASH = "pod-template-hash"


@dataclass
class Actions:
    create: list[Obj] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    status: Obj | None = None


def _owner(obj: Mapping[str, Any], kind: str, api_version: str) -> Obj:
    meta = obj["metadata"]
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _ready(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    return status.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ()
    )


def _terminal(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def owned(pods: Sequence[Obj], owner_uid: str) -> list[Obj]:
    return [
        p for p in pods if any(r.get("uid") == owner_uid for r in p["metadata"].get("ownerReferences") or ())
    ]


def template_hash(template: Mapping[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()
    return "".join(c for c in digest if c in "bcdf256789ghjklmnpqrstvwxz4")[:10]


def _pod_from_template(
    owner: Mapping[str, Any], kind: str, api_version: str, prefix: str, extra_labels: Mapping[str, str]
) -> Obj:
    template = copy.deepcopy(dict((owner.get("spec") or {}).get("template") or {}))
    meta = template.setdefault("metadata", {})
    meta.pop("name", None)
    meta["generateName"] = prefix
    meta["namespace"] = owner["metadata"]["namespace"]
    meta["labels"] = {**(meta.get("labels") or {}), **extra_labels}
    meta["ownerReferences"] = [_owner(owner, kind, api_version)]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template.get("spec") or {}}


def _percent(value: Any, total: int, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        exact = int(value[:-1]) * total / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(value)


def reconcile_deployment(deploy: Mapping[str, Any], pods: Sequence[Obj]) -> Actions:
    spec = deploy.get("spec") or {}
    replicas = int(spec.get("replicas", 1))
    mine = [p for p in owned(pods, deploy["metadata"]["uid"]) if not p["metadata"].get("deletionTimestamp")]
    current = template_hash(spec.get("template") or {})
    new = [p for p in mine if (p["metadata"].get("labels") or {}).get(TEMPLATE_HASH) == current]
    old = [p for p in mine if p not in new]
    out = Actions()
    strategy = spec.get("strategy") or {}
    prefix = f"{deploy['metadata']['name']}-{current}-"
    labels = {TEMPLATE_HASH: current}

    def create(n: int) -> None:
        out.create.extend(
            _pod_from_template(deploy, "Deployment", "apps/v1", prefix, labels) for _ in range(max(0, n))
        )

    def victims(candidates: list[Obj], n: int) -> list[str]:
        # Unready first, then the newest (pkg/controller: ActivePods ordering, simplified).
        ordered = sorted(
            candidates, key=lambda p: (_ready(p), p["metadata"].get("creationTimestamp", "")), reverse=False
        )
        unready = [p for p in ordered if not _ready(p)]
        ready = sorted(
            (p for p in ordered if _ready(p)),
            key=lambda p: p["metadata"].get("creationTimestamp", ""),
            reverse=True,
        )
        return [p["metadata"]["name"] for p in [*unready, *ready][: max(0, n)]]

    if strategy.get("type") == "Recreate":
        if old:
            out.delete.extend(p["metadata"]["name"] for p in old)
        elif len(new) < replicas:
            create(replicas - len(new))
        elif len(new) > replicas:
            out.delete.extend(victims(new, len(new) - replicas))
    else:
        rolling = strategy.get("rollingUpdate") or {}
        surge = _percent(rolling.get("maxSurge", "25%"), replicas, True)
        unavailable = _percent(rolling.get("maxUnavailable", "25%"), replicas, False)
        if surge == 0 and unavailable == 0:
            unavailable = 1
        if not old:
            if len(new) < replicas:
                create(replicas - len(new))
            elif len(new) > replicas:
                out.delete.extend(victims(new, len(new) - replicas))
        else:
            room = replicas + surge - len(mine)
            create(min(room, replicas - len(new)))
            available = sum(1 for p in mine if _ready(p))
            removable = available - (replicas - unavailable)
            unready_old = [p["metadata"]["name"] for p in old if not _ready(p)]
            out.delete.extend(unready_old)
            ready_old = [p for p in old if _ready(p)]
            out.delete.extend(victims(ready_old, min(len(ready_old), removable)))
    ready_now = sum(1 for p in mine if _ready(p))
    generation = int(deploy["metadata"].get("generation") or 1)
    available_ok = ready_now >= replicas - _percent(
        (strategy.get("rollingUpdate") or {}).get("maxUnavailable", "25%"), replicas, False
    )
    out.status = {
        "observedGeneration": generation,
        "replicas": len(mine),
        "updatedReplicas": len(new),
        "readyReplicas": ready_now,
        "availableReplicas": ready_now,
        "unavailableReplicas": max(0, replicas - ready_now),
        "conditions": [
            {
                "type": "Available",
                "status": "True" if available_ok else "False",
                "reason": "MinimumReplicasAvailable" if available_ok else "MinimumReplicasUnavailable",
                "message": "Deployment has minimum availability."
                if available_ok
                else "Deployment does not have minimum availability.",
            },
            {
                "type": "Progressing",
                "status": "True",
                "reason": "NewReplicaSetAvailable"
                if len(new) == replicas and not old
                else "ReplicaSetUpdated",
                "message": f"{deploy['metadata']['name']} rolled out"
                if len(new) == replicas and not old
                else f"{deploy['metadata']['name']} is progressing",
            },
        ],
    }
    return out


def reconcile_job(job: Mapping[str, Any], pods: Sequence[Obj], now: str) -> Actions:
    spec = job.get("spec") or {}
    meta = job["metadata"]
    status: Obj = copy.deepcopy(job.get("status") or {})
    out = Actions()
    if any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in status.get("conditions") or ()
    ):
        return out
    completions = int(spec.get("completions", 1))
    parallelism = int(spec.get("parallelism", 1))
    backoff_limit = int(spec.get("backoffLimit", 6))
    mine = owned(pods, meta["uid"])
    succeeded = sum(1 for p in mine if (p.get("status") or {}).get("phase") == "Succeeded")
    failed = sum(1 for p in mine if (p.get("status") or {}).get("phase") == "Failed")
    failed += sum(
        int(s.get("restartCount") or 0)
        for p in mine
        for s in (p.get("status") or {}).get("containerStatuses") or ()
    )
    active = [p for p in mine if not _terminal(p) and not p["metadata"].get("deletionTimestamp")]
    status.setdefault("startTime", now)
    status.update(active=len(active), succeeded=succeeded, failed=failed)
    conditions: list[Obj] = status.setdefault("conditions", [])
    if succeeded >= completions:
        conditions.append(
            {
                "type": "SuccessCriteriaMet",
                "status": "True",
                "reason": "CompletionsReached",
                "message": "Reached expected number of succeeded pods",
                "lastTransitionTime": now,
            }
        )
        conditions.append(
            {
                "type": "Complete",
                "status": "True",
                "reason": "CompletionsReached",
                "message": "Reached expected number of succeeded pods",
                "lastTransitionTime": now,
            }
        )
        status["completionTime"] = now
        status["active"] = 0
    elif failed > backoff_limit:
        message = "Job has reached the specified backoff limit"
        conditions.append(
            {
                "type": "FailureTarget",
                "status": "True",
                "reason": "BackoffLimitExceeded",
                "message": message,
                "lastTransitionTime": now,
            }
        )
        conditions.append(
            {
                "type": "Failed",
                "status": "True",
                "reason": "BackoffLimitExceeded",
                "message": message,
                "lastTransitionTime": now,
            }
        )
        out.delete.extend(p["metadata"]["name"] for p in active)
        status["active"] = 0
    else:
        wanted = min(parallelism, completions - succeeded) - len(active)
        labels = {
            "batch.kubernetes.io/job-name": meta["name"],
            "job-name": meta["name"],
            "batch.kubernetes.io/controller-uid": meta["uid"],
            "controller-uid": meta["uid"],
        }
        out.create.extend(
            _pod_from_template(job, "Job", "batch/v1", f"{meta['name']}-", labels)
            for _ in range(max(0, wanted))
        )
    if status != (job.get("status") or {}):
        out.status = status
    return out
