"""The operator's own configuration: one frozen dataclass, validated once, passed down whole."""

from __future__ import annotations

from dataclasses import dataclass, field


class ConfigError(ValueError):
    """An operator setting that cannot work; the message names the flag."""


@dataclass(frozen=True)
class OperatorConfig:
    """How the operator runs and what its children look like by default."""

    namespaces: tuple[str, ...] = ()  # empty: every namespace (cluster-wide)
    standalone: bool = True  # False: coordinate with other operators through a KopfPeering
    peering_name: str = "moeplane"
    liveness_endpoint: str | None = None  # e.g. http://0.0.0.0:8080/healthz
    redis_url: str | None = None  # where the deployments' keys live; None: nothing to clean up
    resync_s: float = 30.0  # the periodic level-triggered reconcile of every MoEDeployment
    wait_s: float = 5.0  # retry delay while waiting on children (TemporaryError)
    redis_cleanup_timeout_s: float = 60.0  # give up cleaning an unreachable Redis after this
    image: str = "ghcr.io/moeplane/moeplane:0.1.0"  # default image of workers and the frontend
    ray_version: str = "2.40.0"
    frontend_port: int = 8000
    # A frontend pod told to stop keeps serving this long with /health 503 while the Service's
    # endpoints drop it (what a preStop sleep does elsewhere), then lets requests in flight finish
    # for up to frontend_drain_timeout_s; its terminationGracePeriodSeconds covers both.
    frontend_shutdown_delay_s: float = 5.0
    frontend_drain_timeout_s: float = 30.0
    # Referenced by every pod the operator makes (the chart's imagePullSecrets); a pull Secret is
    # namespaced, so each must exist in the MoEDeployments' namespaces too.
    image_pull_secrets: tuple[str, ...] = ()
    head_resources: dict[str, dict[str, str]] = field(
        default_factory=lambda: {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"memory": "8Gi"}}
    )
    # The `moeplane pool` sidecar of each Ray head: the groups' control services and registry.
    pool_resources: dict[str, dict[str, str]] = field(
        default_factory=lambda: {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "4Gi"}}
    )
    # The frontend (tokenizer, HTTP, routing); spec.frontend.resources is merged over it.
    frontend_resources: dict[str, dict[str, str]] = field(
        default_factory=lambda: {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "8Gi"}}
    )
    # The init container that fills the Hugging Face cache (hf:// locations).
    fetch_resources: dict[str, dict[str, str]] = field(
        default_factory=lambda: {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "8Gi"}}
    )

    def __post_init__(self) -> None:
        if self.resync_s <= 0:
            raise ConfigError(f"--resync-seconds must be positive (got {self.resync_s})")
        if self.wait_s <= 0:
            raise ConfigError(f"--wait-seconds must be positive (got {self.wait_s})")
        if not self.standalone and not self.peering_name:
            raise ConfigError("--peering needs a peering name")
        if self.frontend_shutdown_delay_s < 0 or self.frontend_drain_timeout_s < 0:
            raise ConfigError(
                f"frontend_shutdown_delay_s ({self.frontend_shutdown_delay_s}) and frontend_drain_timeout_s "
                f"({self.frontend_drain_timeout_s}) must be >= 0"
            )
        if not 0 < self.frontend_port < 65536:
            raise ConfigError(f"frontend_port must be a TCP port (got {self.frontend_port})")

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces
