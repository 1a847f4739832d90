"""Status of a MoEDeployment: conditions, per-pool readiness, placement and the planner's decision.

The operator computes status from what it observes and writes it only when it changed; the
planner fills `lastDecision`. Times are timezone-aware datetimes (RFC 3339 on the wire).
"""

from __future__ import annotations

from datetime import datetime

from moeplane.api.base import ApiModel
from moeplane.api.enums import ConditionStatus, ConditionType
from pydantic import Field


class Condition(ApiModel):
    """One condition, Kubernetes style."""

    type: ConditionType = Field(description="Ready, Progressing, Degraded or Invalid.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field("", description="CamelCase reason for the last transition.")
    message: str = Field("", description="Human-readable detail, e.g. the validation problems.")
    last_transition_time: datetime | None = Field(
        None, description="When the status last changed."
    )
    observed_generation: int | None = Field(
        None, ge=0, description="The spec generation this condition was computed from."
    )


class PoolStatus(ApiModel):
    """Readiness of one pool (taken from its RayCluster) and its current expert placement."""

    desired_groups: int = Field(0, ge=0, description="EP groups asked for (the MoEPool's replicas).")
    ready_groups: int = Field(0, ge=0, description="EP groups with every worker ready.")
    ready_workers: int = Field(0, ge=0, description="Ready worker pods over all groups.")
    placement_version: int | None = Field(
        None, ge=0, description="Version of the expert placement the pool serves with."
    )
    balancedness: float | None = Field(
        None, ge=0, le=1, description="Mean/max per-GPU token load in the last EPLB window."
    )


class PlannerDecisionStatus(ApiModel):
    """The planner's last decision, with its reasons."""

    at: datetime = Field(description="When the decision was made.")
    prefill_replicas: int = Field(ge=0, description="Prefill EP groups decided.")
    decode_replicas: int = Field(ge=0, description="Decode EP groups decided.")
    predicted_requests_per_s: float | None = Field(
        None, ge=0, description="Predicted arrival rate for the next interval."
    )
    applied: bool = Field(True, description="Whether the decision was applied to the pools.")
    reason: str = Field("", description="Why the planner decided this.")
    layout_recommendation: str | None = Field(
        None, description="The cheapest EP layout for the observed load, and the GPU-hours it would save."
    )


class MoEDeploymentStatus(ApiModel):
    """Observed state of a MoEDeployment."""

    observed_generation: int | None = Field(
        None, ge=0, description="The spec generation the status describes."
    )
    conditions: list[Condition] = Field(
        default_factory=list, description="Ready, Progressing, Degraded and Invalid."
    )
    prefill: PoolStatus | None = Field(None, description="The prefill pool.")
    decode: PoolStatus | None = Field(None, description="The decode pool.")
    total_gpus: int | None = Field(None, ge=0, description="GPUs asked for by both pools.")
    last_decision: PlannerDecisionStatus | None = Field(
        None, description="The planner's last decision."
    )

    def condition(self, kind: ConditionType) -> Condition | None:
        return next((c for c in self.conditions if c.type is kind), None)
