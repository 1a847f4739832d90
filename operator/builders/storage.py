"""The model's weights and tokenizer in the pods: volumes, mounts, env and the cache-filling init
container, from the locations of `api/locations.py`. Pure.

- A local path is baked into the image: nothing is mounted.
- `pvc://CLAIM/PATH`: the claim is mounted read-only at `/mnt/moeplane/pvc/CLAIM` in every
  container that reads the model (the `moeplane pool` sidecar, the Ray workers, the frontend), so
  the sidecar and the ranks see the same path. A claim read by several nodes must be ReadOnlyMany
  (or ReadWriteMany).
- `hf://ORG/REPO[@REV]`: the Hugging Face cache (`spec.model.hfCache`: a claim, or an emptyDir per
  pod) is mounted at `/mnt/moeplane/hf` with `HF_HOME` pointing there, and an init container runs
  `python -m moeplane.hfcache fetch` to fill it; it returns at once when the cache already holds
  the revision. Serving containers read it with `HF_HUB_OFFLINE=1`: they never reach the Hub.
  Worker pods fetch the whole repository; the head's sidecar and the frontend only its configs and
  tokenizer (`--light`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from moeplane.api import podcontract as pc
from moeplane.api.locations import Location, LocationKind, parse_location, pvc_mount_path
from moeplane.api.podchecks import BYTES_TOKENIZER
from moeplane.api.podtemplate import ModelStorage

Obj = dict[str, Any]

FETCH_MODULE = "moeplane.hfcache"
FETCH_CONTAINER = "hf-fetch"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def pvc_volume_name(claim: str) -> str:
    """`pvc-CLAIM`, or `pvc-<hash>` when the claim name is no DNS label of <= 59 characters."""
    if len(claim) <= 59 and _DNS_LABEL.match(claim):
        return f"{pc.PVC_VOLUME_PREFIX}{claim}"
    return f"{pc.PVC_VOLUME_PREFIX}{hashlib.sha256(claim.encode()).hexdigest()[:12]}"


@dataclass(frozen=True)
class ModelMounts:
    """What a pod needs to read the model: volumes, each container's mounts and env, init containers."""

    volumes: list[Obj]
    mounts: list[Obj]
    env: list[Obj]
    init_containers: list[Obj]


def _locations(storage: ModelStorage | None, light: bool) -> list[tuple[Location, bool]]:
    """(location, light) of every location a pod reads; `light`: configs and tokenizer only."""
    if storage is None:
        return []
    out: list[tuple[Location, bool]] = []
    if storage.weights:
        out.append((parse_location(storage.weights), light))
    if storage.tokenizer and storage.tokenizer != BYTES_TOKENIZER:
        out.append((parse_location(storage.tokenizer), True))
    return out


def model_mounts(
    storage: ModelStorage | None,
    *,
    light: bool,
    image: str,
    fetch_env: list[Obj],
    security_context: Obj,
    resources: Obj,
) -> ModelMounts:
    """Volumes, mounts, env and init containers for the model locations of `storage`.

    `light`: the pod reads configs and the tokenizer only (the head's sidecar, the frontend).
    `fetch_env`: extra env of the init container (the user's, e.g. HF_TOKEN from a Secret).
    """
    volumes: list[Obj] = []
    mounts: list[Obj] = []
    env: list[Obj] = [{"name": pc.VOLUME_ROOT_ENV_NAME, "value": pc.VOLUME_ROOT}]
    fetches: dict[str, bool] = {}  # uri -> light (a full fetch covers a light one)
    for loc, loc_light in _locations(storage, light):
        if loc.kind is LocationKind.PVC:
            name = pvc_volume_name(loc.claim)
            if all(v["name"] != name for v in volumes):
                volumes.append(
                    {"name": name, "persistentVolumeClaim": {"claimName": loc.claim, "readOnly": True}}
                )
                mounts.append({"name": name, "mountPath": pvc_mount_path(loc.claim), "readOnly": True})
        elif loc.kind is LocationKind.HF:
            fetches[loc.uri] = fetches.get(loc.uri, True) and loc_light
    init: list[Obj] = []
    if fetches:
        assert storage is not None
        cache = storage.hf_cache
        if cache is not None and cache.claim_name:
            source: Obj = {"persistentVolumeClaim": {"claimName": cache.claim_name}}
        else:
            source = {"emptyDir": {"sizeLimit": cache.size_limit} if cache and cache.size_limit else {}}
        volumes.append({"name": pc.HF_CACHE_VOLUME, **source})
        hf_mount = {"name": pc.HF_CACHE_VOLUME, "mountPath": pc.HF_HOME}
        mounts.append({**hf_mount, "readOnly": True})
        env += [{"name": pc.HF_HOME_ENV, "value": pc.HF_HOME}, {"name": pc.HF_OFFLINE_ENV, "value": "1"}]
        for i, (uri, uri_light) in enumerate(fetches.items()):
            init.append(
                {
                    "name": f"{FETCH_CONTAINER}-{i}",
                    "image": image,
                    "command": [
                        "python",
                        "-m",
                        FETCH_MODULE,
                        "fetch",
                        *(["--light"] if uri_light else []),
                        uri,
                    ],
                    "env": [
                        {"name": pc.HF_HOME_ENV, "value": pc.HF_HOME},
                        {"name": pc.VOLUME_ROOT_ENV_NAME, "value": pc.VOLUME_ROOT},
                        *fetch_env,
                    ],
                    "resources": resources,
                    "securityContext": security_context,
                    "volumeMounts": [hf_mount],
                }
            )
    return ModelMounts(volumes, mounts, env, init)
