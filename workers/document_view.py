"""`DocumentView`: the names every process derives from its runtime document (the deployment's
Redis keys, the served model name, the architecture), stated once for `moeplane pool`'s settings,
`moeplane frontend`'s and `moeplane up`'s plan."""

from __future__ import annotations

from moeplane.api.arch import ModelArch
from moeplane.api.runtime import EngineDocument

from moeplane.bus.keys import DeploymentKeys


class DocumentView:
    """Mixed into a (dataclass) holder of `document`."""

    document: EngineDocument

    @property
    def keys(self) -> DeploymentKeys:
        return DeploymentKeys(self.document.namespace, self.document.deployment)

    @property
    def served_model(self) -> str:
        return self.document.model.served_model_name

    @property
    def arch(self) -> ModelArch:
        return self.document.model.architecture
