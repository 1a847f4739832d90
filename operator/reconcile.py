"""The level-triggered reconcile: one ordered list of idempotent steps per object kind.

MoEDeployment: Secret (gRPC token, Redis URL) -> engine ConfigMap (the runtime document) ->
MoEPools (each with its pool's layout) -> frontend Deployment and Service -> each pool's children
-> status. MoEPool:
RayCluster of the current revision -> headless Service -> retire old revisions once the new one
serves -> status.

Each step builds the desired object with a pure builder, compares it with the cached live one and
creates or patches only what differs. Run twice on an unchanged world, it writes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf
from moeplane.api import podcontract as pc
from moeplane.api.enums import Role
from moeplane.api.errors import SpecInvalid
from moeplane.api.runtime import resolve_runtime
from moeplane.api.spec import MoEPool, MoEPoolSpec, parse_deployment, parse_pool
from moeplane.operator import names
from moeplane.operator.builders.configmaps import build_engine_configmap
from moeplane.operator.builders.frontend import (
    build_frontend_deployment,
    build_frontend_service,
    build_worker_service,
)
from moeplane.operator.builders.pools import build_pool, desired_pool_replicas
from moeplane.operator.builders.raycluster import build_raycluster
from moeplane.operator.builders.secret import build_deployment_secret, new_grpc_token, secret_patch
from moeplane.operator.context import Context
from moeplane.operator.diffing import ChildPolicy, Delete, Patch, with_hash
from moeplane.operator.groups import RAY_NODE_TYPE_LABEL, cluster_views
from moeplane.operator.kinds import (
    CONFIGMAP,
    DEPLOYMENT,
    MOEDEPLOYMENT,
    MOEPOOL,
    POD,
    RAYCLUSTER,
    SECRET,
    SERVICE,
)
from moeplane.operator.kube import ApiError
from moeplane.operator.observe import PoolObservation, RayClusterObservation, Serving, observe_pool
from moeplane.operator.rollout import plan_pool
from moeplane.operator.status import (
    EplbReading,
    PoolSummary,
    deployment_status,
    invalid_status,
    now_utc,
    pool_status,
    refused_pool_status,
    status_patch,
)

POOL_POLICY = ChildPolicy(
    prune=(("spec",),),
    drift=((("spec", "replicas"), ("spec", "replicas")),),
    unhashed=(("spec", "replicas"),),
)
RAYCLUSTER_POLICY = ChildPolicy(
    drift=(
        (("spec", "workerGroupSpecs", 0, "replicas"), ("spec", "workerGroupSpecs")),
        (("spec", "workerGroupSpecs", 0, "scaleStrategy"), ("spec", "workerGroupSpecs")),
    ),
    unhashed=(
        ("spec", "workerGroupSpecs", 0, "replicas"),
        ("spec", "workerGroupSpecs", 0, "scaleStrategy"),
    ),
)
CONFIGMAP_POLICY = ChildPolicy(prune=(("data",),))
DEPLOYMENT_POLICY = ChildPolicy(drift=((("spec", "replicas"), ("spec", "replicas")),))
# The Secret's data is kept out of the hash annotation, which every reader of its metadata sees.
SECRET_UNHASHED = (("data",),)


@dataclass(frozen=True)
class Outcome:
    """What a reconcile found: Ready, still waiting (and on what), or an invalid spec."""

    ready: bool
    waiting: str = ""
    invalid: str = ""


def _wire(body: Mapping[str, Any]) -> dict[str, Any]:
    """The user's part of an object: the typed models forbid unknown fields, and the server adds some."""
    meta = body.get("metadata") or {}
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace")},
        "spec": body.get("spec"),
    }


def _generation(body: Mapping[str, Any]) -> int | None:
    value = (body.get("metadata") or {}).get("generation")
    return int(value) if value is not None else None


# ---- MoEDeployment --------------------------------------------------------------------------------
async def reconcile_deployment(ctx: Context, body: Mapping[str, Any]) -> Outcome:
    meta = body["metadata"]
    name, namespace = str(meta["name"]), str(meta["namespace"])
    async with ctx.locks(MOEDEPLOYMENT, namespace, name):
        ctx.counters.reconciles["moedeployments"] += 1
        try:
            deployment = parse_deployment(_wire(body))
        except SpecInvalid as exc:
            message = "; ".join(exc.messages)
            await _mark_invalid(ctx, body, message)
            return Outcome(ready=False, invalid=message)
        ctx.reported.pop((MOEDEPLOYMENT.plural, namespace, name), None)
        document = resolve_runtime(deployment, namespace=namespace)

        await _ensure_secret(ctx, body, name, namespace)
        await ctx.ensure(CONFIGMAP, build_engine_configmap(document), body, CONFIGMAP_POLICY)
        pools: dict[Role, dict[str, Any]] = {}
        for role in Role:
            live = ctx.lookup(MOEPOOL, namespace, names.pool_name(name, role))
            replicas = desired_pool_replicas(deployment.spec.pool(role).replicas, live)
            desired = build_pool(deployment, name, namespace, role, document.pool(role), replicas)
            pools[role] = await ctx.ensure(MOEPOOL, desired, body, POOL_POLICY)
        await ctx.ensure(
            DEPLOYMENT,
            build_frontend_deployment(deployment, name, namespace, ctx.config),
            body,
            DEPLOYMENT_POLICY,
        )
        await ctx.ensure(SERVICE, build_frontend_service(name, namespace, ctx.config), body)

        summaries = [await reconcile_pool(ctx, pools[role]) for role in Role]
        status = deployment_status(summaries, _generation(body), body.get("status"), now_utc())
        await ctx.write_status(MOEDEPLOYMENT, namespace, name, status_patch(body.get("status"), status))
        waiting = [
            f"{s.role.value} {s.ready_groups}/{s.desired_groups} groups ready"
            for s in summaries
            if not s.ready
        ]
        return Outcome(ready=not waiting, waiting="; ".join(waiting))


async def _ensure_secret(ctx: Context, body: Mapping[str, Any], name: str, namespace: str) -> None:
    """The deployment's Secret, made and patched without ever reading a Secret (the operator's RBAC
    has no read on Secrets): created with a new token; when it exists already (a restart, a second
    operator) only its labels, owner and Redis URL are patched, so the token it holds stays. What was
    last written is remembered per operator, so a resync writes nothing."""
    desired = build_deployment_secret(name, namespace, new_grpc_token(), ctx.config.redis_url)
    kopf.adopt(desired, owner=dict(body))  # type: ignore[arg-type]
    desired = with_hash(desired, SECRET_UNHASHED)
    patch = secret_patch(desired)
    key = (namespace, str(desired["metadata"]["name"]))
    digest = json.dumps(patch, sort_keys=True)
    if ctx.secrets_written.get(key) == digest:
        return
    ctx.counters.writes[SECRET.plural] += 1
    try:
        await ctx.api.create(SECRET, namespace, desired)
    except ApiError as exc:
        if not exc.conflict:
            raise
        ctx.counters.writes[SECRET.plural] += 1
        await ctx.api.patch(SECRET, namespace, key[1], patch)
    ctx.secrets_written[key] = digest


async def _mark_invalid(ctx: Context, body: Mapping[str, Any], message: str) -> None:
    """Invalid condition + a Warning Event with the exact message; nothing created or deleted.

    The Event is posted only when the condition changes, so a resync of a still-invalid spec
    writes nothing.
    """
    meta = body["metadata"]
    namespace, name = str(meta["namespace"]), str(meta["name"])
    status = invalid_status(message, _generation(body), body.get("status"), now_utc())
    await ctx.write_status(MOEDEPLOYMENT, namespace, name, status_patch(body.get("status"), status))
    key = (MOEDEPLOYMENT.plural, namespace, name)
    if ctx.reported.get(key) != message:
        ctx.reported[key] = message
        ctx.events.warn(body, reason="InvalidSpec", message=message)


# ---- MoEPool --------------------------------------------------------------------------------------
def retired(obs: PoolObservation) -> list[RayClusterObservation]:
    """Old revisions to delete now.

    All of them once the current revision serves every group it should; before that, only
    those that serve nothing while something else serves (capacity never drops to zero).
    """
    if not obs.old:
        return []
    if obs.current is not None and obs.current.fully_ready:
        return list(obs.old)
    others_serve = [o for o in obs.old if o.ready_groups] or (
        [obs.current] if obs.current and obs.current.ready_groups else []
    )
    return [o for o in obs.old if not o.ready_groups] if others_serve else []


def refusal(body: Mapping[str, Any], deployment: str) -> str:
    """Why the operator runs nothing for this MoEPool ("" when it is a MoEDeployment's).

    A pool's pods need the engine ConfigMap, placement and Secret that its MoEDeployment's
    reconcile makes from the model, the layouts of both pools and the Redis settings; a pool alone
    carries none of that. So a MoEPool made by hand is refused, never half-run (pods stuck in
    ContainerCreating on ConfigMaps nobody makes).
    """
    meta = body.get("metadata") or {}
    owners = [
        ref
        for ref in meta.get("ownerReferences") or ()
        if ref.get("kind") == MOEDEPLOYMENT.kind
        and str(ref.get("apiVersion", "")).startswith(f"{names.DOMAIN}/")
    ]
    if any(ref.get("name") == deployment for ref in owners):
        return ""
    return (
        f"MoEPool {meta.get('namespace')}/{meta.get('name')} is not owned by MoEDeployment {deployment!r} "
        "(spec.deploymentName): the operator runs only the pools a MoEDeployment makes, since their pods "
        "need the engine configuration, placement and Secret the deployment provides. Create a "
        "MoEDeployment instead, and scale its pools with `kubectl scale moepool`."
    )


async def _refuse_pool(ctx: Context, body: Mapping[str, Any], message: str) -> None:
    meta = body["metadata"]
    namespace, name = str(meta["namespace"]), str(meta["name"])
    status = refused_pool_status(
        message, names.pool_selector(name), _generation(body), body.get("status"), now_utc()
    )
    await ctx.write_status(MOEPOOL, namespace, name, status_patch(body.get("status"), status))
    key = (MOEPOOL.plural, namespace, name)
    if ctx.reported.get(key) != message:
        ctx.reported[key] = message
        ctx.events.warn(body, reason="NotOwnedByDeployment", message=message)


async def _roll_by_pods(
    ctx: Context,
    body: Mapping[str, Any],
    desired: dict[str, Any],
    current_name: str,
    live: Mapping[str, Any],
) -> PoolObservation:
    """Without a registry: readiness from KubeRay's ready pods; old revisions go when the new serves."""
    current = await ctx.ensure(RAYCLUSTER, desired, body, RAYCLUSTER_POLICY, live=live.get(current_name))
    namespace = str(body["metadata"]["namespace"])
    replicas = int(desired["spec"]["workerGroupSpecs"][0]["replicas"])
    clusters = [rc for rc_name, rc in live.items() if rc_name != current_name] + [current]
    obs = observe_pool(replicas, current_name, clusters)
    gone = retired(obs)
    for old in gone:
        await ctx.apply(Delete(RAYCLUSTER, namespace, old.name, old.uid))
    if gone:
        obs = PoolObservation(obs.desired_groups, obs.current, tuple(o for o in obs.old if o not in gone))
    return obs


async def _roll(
    ctx: Context,
    body: Mapping[str, Any],
    spec: MoEPoolSpec,
    name: str,
    namespace: str,
    current_name: str,
    live: Mapping[str, Any],
) -> PoolObservation:
    """With the registry: scale and roll out one EP group at a time (operator/rollout.py)."""
    assert ctx.groups is not None
    reading = await ctx.groups.read(namespace, spec.deployment_name)
    existing = live.get(current_name)
    if reading is None:
        # Serving is unknown: change nothing that could remove capacity.
        group = ((existing or {}).get("spec") or {}).get("workerGroupSpecs") or [{}]
        replicas = int(group[0].get("replicas") or 0) if existing else (0 if live else spec.replicas)
        keep = tuple((group[0].get("scaleStrategy") or {}).get("workersToDelete") or ())
        desired = build_raycluster(spec, name, namespace, spec.layout.gpu, ctx.config, replicas, keep)
        current = await ctx.ensure(RAYCLUSTER, desired, body, RAYCLUSTER_POLICY, live=existing)
        clusters = [rc for n, rc in live.items() if n != current_name] + [current]
        return observe_pool(spec.replicas, current_name, clusters)
    selector = f"{names.POOL_LABEL}={names.label_value(name)},{RAY_NODE_TYPE_LABEL}=worker"
    pods = await ctx.api.list(POD, namespace, selector)
    views = cluster_views(name, current_name, live.values(), pods, reading)
    # The drain bookkeeping is the deployment's: this pool answers only for its own groups.
    mine_kept = [g for g in reading.bookkept if pc.of_pool(g, name)]
    plan = plan_pool(spec.replicas, spec.rollout.max_surge_groups, views, mine_kept)
    mine = views[0]
    change = plan.changes.get(current_name)
    replicas = change.replicas if change else mine.replicas if existing else spec.replicas
    to_delete = change.workers_to_delete if change else mine.workers_to_delete
    desired = build_raycluster(spec, name, namespace, spec.layout.gpu, ctx.config, replicas, to_delete)
    current = await ctx.ensure(RAYCLUSTER, desired, body, RAYCLUSTER_POLICY, live=existing)
    kept: list[Mapping[str, Any]] = [current]
    for rc_name, rc in live.items():
        if rc_name == current_name:
            continue
        if rc_name in plan.delete:
            await ctx.apply(Delete(RAYCLUSTER, namespace, rc_name, str(rc["metadata"].get("uid", ""))))
            continue
        old_change = plan.changes.get(rc_name)
        if old_change is not None:
            groups = [dict(g) for g in rc["spec"]["workerGroupSpecs"]]
            groups[0]["replicas"] = old_change.replicas
            groups[0]["scaleStrategy"] = {"workersToDelete": list(old_change.workers_to_delete)}
            rc = await ctx.apply(
                Patch(RAYCLUSTER, namespace, rc_name, {"spec": {"workerGroupSpecs": groups}})
            )
        kept.append(rc)
    # Bookkeeping of groups whose pods are named for deletion is cleared only now, after the
    # patch: KubeRay may hand their replica index to a new group, which must not inherit it.
    await ctx.groups.forget(namespace, spec.deployment_name, plan.forget)
    await ctx.groups.request_drain(namespace, spec.deployment_name, plan.drain)
    obs = observe_pool(spec.replicas, current_name, kept)
    serving = Serving(plan.serving, plan.current_serving, plan.draining, plan.down, plan.pending)
    return PoolObservation(obs.desired_groups, obs.current, obs.old, serving)


async def reconcile_pool(ctx: Context, body: Mapping[str, Any]) -> PoolSummary:
    meta = body["metadata"]
    name, namespace = str(meta["name"]), str(meta["namespace"])
    async with ctx.locks(MOEPOOL, namespace, name):
        ctx.counters.reconciles["moepools"] += 1
        pool: MoEPool = parse_pool(_wire(body))
        spec = pool.spec
        refused = refusal(body, spec.deployment_name)
        if refused:
            await _refuse_pool(ctx, body, refused)
            return PoolSummary(
                role=spec.role,
                desired_groups=spec.replicas,
                ready_groups=0,
                ready_workers=0,
                ready=False,
                rolling_out=False,
                failure=None,
                gpus_per_group=spec.layout.gpus_per_group,
                refused=refused,
            )
        desired = build_raycluster(spec, name, namespace, spec.layout.gpu, ctx.config)
        pool_label = names.label_value(name)
        live = {str(rc["metadata"]["name"]): rc for rc in await ctx.rayclusters(namespace, pool_label)}
        current_name = str(desired["metadata"]["name"])
        if ctx.groups is not None:
            obs = await _roll(ctx, body, spec, name, namespace, current_name, live)
        else:
            obs = await _roll_by_pods(ctx, body, desired, current_name, live)
        await ctx.ensure(
            SERVICE, build_worker_service(spec.deployment_name, name, namespace, spec.role), body
        )
        eplb = await ctx.eplb.read(namespace, spec.deployment_name, spec.role) if ctx.eplb else None
        status = pool_status(
            obs, names.pool_selector(name), _generation(body), body.get("status"), now_utc(), eplb
        )
        await ctx.write_status(MOEPOOL, namespace, name, status_patch(body.get("status"), status))
        return PoolSummary(
            role=spec.role,
            desired_groups=spec.replicas,
            ready_groups=obs.ready_groups,
            ready_workers=obs.ready_workers,
            ready=obs.ready,
            rolling_out=obs.rolling_out,
            failure=obs.failure,
            gpus_per_group=spec.layout.gpus_per_group,
            eplb=eplb or EplbReading(),
        )
