"""The dashboard's SLA tuning form: parse, validate, and turn into a MoEDeployment spec patch.

Pure: the HTTP handlers translate `TuningError` to 400 with the field it names.
"""

from __future__ import annotations

import copy
from typing import Any

from moeplane.api.enums import Predictor
from moeplane.api.errors import SpecInvalid
from moeplane.api.spec import MoEDeploymentSpec, parse_deployment
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class TuningError(ValueError):
    """Bad tuning input: `field` is the form field (camelCase) at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class SlaTuning(BaseModel):
    """Proposed SLA and planner settings. Omitted fields keep the deployment's values."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    ttft_ms: float | None = Field(None, alias="ttftMs", gt=0)
    itl_ms: float | None = Field(None, alias="itlMs", gt=0)
    percentile: float | None = Field(None, gt=0, lt=100)
    predictor: Predictor | None = None
    prefill_min_replicas: int | None = Field(None, alias="prefillMinReplicas", ge=0)
    prefill_max_replicas: int | None = Field(None, alias="prefillMaxReplicas", ge=0)
    decode_min_replicas: int | None = Field(None, alias="decodeMinReplicas", ge=0)
    decode_max_replicas: int | None = Field(None, alias="decodeMaxReplicas", ge=0)
    gpu_budget_nodes: int | None = Field(None, alias="gpuBudgetNodes", gt=0)

    def spec_patch(self) -> dict[str, Any]:
        """A JSON merge patch of `spec` with the fields given."""
        patch: dict[str, Any] = {}

        def put(section: str, key: str, value: object) -> None:
            if value is not None:
                patch.setdefault(section, {})[key] = value.value if isinstance(value, Predictor) else value

        put("sla", "ttftMs", self.ttft_ms)
        put("sla", "itlMs", self.itl_ms)
        put("sla", "percentile", self.percentile)
        put("planner", "predictor", self.predictor)
        put("planner", "gpuBudgetNodes", self.gpu_budget_nodes)
        put("prefill", "minReplicas", self.prefill_min_replicas)
        put("prefill", "maxReplicas", self.prefill_max_replicas)
        put("decode", "minReplicas", self.decode_min_replicas)
        put("decode", "maxReplicas", self.decode_max_replicas)
        return patch


_ALIASES = {name: (f.alias or name) for name, f in SlaTuning.model_fields.items()}


def parse_tuning(body: object) -> SlaTuning:
    """The form's JSON body; empty strings mean "unchanged"."""
    if not isinstance(body, dict):
        raise TuningError("body", f"expected a JSON object, got {type(body).__name__}")
    cleaned = {k: v for k, v in body.items() if v != "" and v is not None}
    try:
        return SlaTuning.model_validate(cleaned)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = str(err["loc"][0]) if err["loc"] else "body"
        field = _ALIASES.get(loc, loc)
        raise TuningError(field, f"{err['msg']} (got {err.get('input')!r})") from None


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def proposed_spec(obj: dict[str, Any], tuning: SlaTuning) -> MoEDeploymentSpec:
    """The deployment's spec with the tuning applied, validated as the API would (bounds that
    cross, a budget below the minimum pools...)."""
    candidate = copy.deepcopy({k: obj[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in obj})
    _merge(candidate.setdefault("spec", {}), tuning.spec_patch())
    try:
        return parse_deployment(candidate).spec
    except SpecInvalid as exc:
        raise TuningError(_form_field(str(exc)), str(exc)) from None


def _form_field(message: str) -> str:
    for spec_path, form in (
        ("prefill.minReplicas", "prefillMinReplicas"),
        ("prefill.maxReplicas", "prefillMaxReplicas"),
        ("decode.minReplicas", "decodeMinReplicas"),
        ("decode.maxReplicas", "decodeMaxReplicas"),
        ("gpuBudgetNodes", "gpuBudgetNodes"),
        ("ttftMs", "ttftMs"),
        ("itlMs", "itlMs"),
        ("percentile", "percentile"),
        ("predictor", "predictor"),
    ):
        if spec_path in message:
            return form
    return "spec"
