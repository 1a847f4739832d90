"""Every Kubernetes name, label and annotation the operator writes, in one place.

Names are deterministic functions of the owner's name (so a restarted operator finds what it
created and never duplicates it) and respect Kubernetes' limits: a Service name is a DNS-1035
label (63 characters, starting with a letter), a label value has at most 63 characters. A name
that would be too long keeps a readable prefix and ends with a hash of the full name.
"""

from __future__ import annotations

import hashlib
import re

from moeplane.api.enums import Role

DOMAIN = "moeplane.io"

# The finalizer (only the deployment's Redis keys need one) and kopf's storage prefix.
FINALIZER = f"{DOMAIN}/cleanup"
PROGRESS_PREFIX = DOMAIN

# Labels.
APP_NAME = "app.kubernetes.io/name"
APP_INSTANCE = "app.kubernetes.io/instance"
APP_COMPONENT = "app.kubernetes.io/component"
MANAGED_BY = "app.kubernetes.io/managed-by"
PART_OF = "app.kubernetes.io/part-of"
DEPLOYMENT_LABEL = f"{DOMAIN}/deployment"
ROLE_LABEL = f"{DOMAIN}/role"
POOL_LABEL = f"{DOMAIN}/pool"
REVISION_LABEL = f"{DOMAIN}/revision"
MANAGER = "moeplane-operator"
APP = "moeplane"

# Annotations.
DESIRED_HASH = f"{DOMAIN}/desired-hash"  # hash of what the operator last wrote to a child
DEPLOYMENT_REPLICAS = f"{DOMAIN}/deployment-replicas"  # the deployment's replicas last given to a pool

# KubeRay's own label on the pods of a worker group.
RAY_NODE_TYPE = "ray.io/node-type"
RAY_CLUSTER_LABEL = "ray.io/cluster"

MAX_LABEL = 63
MAX_DNS_LABEL = 63
# KubeRay derives `<cluster>-head-svc` and `<cluster>-<group>-worker-<5>` from a RayCluster's name.
MAX_RAYCLUSTER = 47


def _digest(text: str, length: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _fit(base: str, suffix: str, limit: int) -> str:
    """`base + suffix`, shortened to `limit` characters by hashing when too long."""
    name = base + suffix
    if len(name) <= limit:
        return name
    keep = limit - len(suffix) - 9
    return f"{base[:keep].rstrip('-.')}-{_digest(base)}{suffix}"


def dns_label(base: str, suffix: str = "") -> str:
    """A DNS-1035 label (Service names): lower case, `-` only, starts with a letter, <= 63."""
    cleaned = re.sub(r"[^a-z0-9-]", "-", base.lower())
    if not cleaned[:1].isalpha():
        cleaned = "m-" + cleaned
    return _fit(cleaned, suffix, MAX_DNS_LABEL)


def label_value(value: str) -> str:
    """A label value (<= 63 characters, alphanumeric at both ends) naming `value` deterministically."""
    if len(value) <= MAX_LABEL:
        return value
    return f"{value[: MAX_LABEL - 9].rstrip('-._')}-{_digest(value)}"


# ---- names of the children ----------------------------------------------------------------------
def pool_name(deployment: str, role: Role) -> str:
    return _fit(deployment, f"-{role.value}", 253)


def engine_configmap(deployment: str) -> str:
    return _fit(deployment, "-engine", 253)


def frontend(deployment: str) -> str:
    """Frontend Deployment and Service (a Service name is a DNS label)."""
    return dns_label(deployment, "-frontend")


def raycluster(pool: str, revision: str) -> str:
    return _fit(dns_label(pool), f"-{revision}", MAX_RAYCLUSTER)


def worker_service(pool: str) -> str:
    return dns_label(pool, "-workers")


def deployment_secret(deployment: str) -> str:
    """The deployment's Secret: the workers' gRPC token and the Redis URL."""
    return _fit(deployment, "-secret", 253)


# ---- labels -----------------------------------------------------------------------------------
def deployment_labels(deployment: str, component: str) -> dict[str, str]:
    return {
        APP_NAME: APP,
        APP_INSTANCE: label_value(deployment),
        APP_COMPONENT: component,
        MANAGED_BY: MANAGER,
        PART_OF: APP,
        DEPLOYMENT_LABEL: label_value(deployment),
    }


def pool_labels(deployment: str, pool: str, role: Role) -> dict[str, str]:
    return {
        **deployment_labels(deployment, role.value),
        ROLE_LABEL: role.value,
        POOL_LABEL: label_value(pool),
    }


def pool_selector(pool: str) -> str:
    """Label selector of a pool's worker pods (the scale subresource's selector)."""
    return f"{POOL_LABEL}={label_value(pool)},{RAY_NODE_TYPE}=worker"


MANAGED_SELECTOR = f"{MANAGED_BY}={MANAGER}"
