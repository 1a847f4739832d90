"""Where weights and tokenizers live: the URI forms a manifest may use, and where a pod sees them.

Forms of `spec.model.weights.uri` and `spec.model.tokenizer`:
- `/abs/path` or `file:///abs/path`: a local directory (in Kubernetes: baked into the image);
- `pvc://CLAIM/PATH`: PATH inside the PersistentVolumeClaim CLAIM of the deployment's namespace.
  The operator mounts the claim read-only into every pool pod at `pvc_mount_path(CLAIM)`;
- `hf://ORG/REPO` or `hf://ORG/REPO@REVISION`: a Hugging Face Hub repository, read from the
  Hugging Face cache (`HF_HOME`); in Kubernetes a cache volume mounted at `HF_HOME_MOUNT_PATH` is
  filled by an init container.

Parsing here is pure and decides only the form. Whether the location can be reached is a load-time
question that the loader answers with an error naming the location.

Inside a pod every mounted volume sits under one root, `VOLUME_ROOT_ENV` (default
`DEFAULT_VOLUME_ROOT`), which the operator sets in the pod's environment; a test pod runner that
maps mounts to local directories rewrites it like any other path under a mount.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath

VOLUME_ROOT_ENV = "MOEPLANE_VOLUME_ROOT"
DEFAULT_VOLUME_ROOT = "/mnt/moeplane"
HF_HOME_MOUNT_PATH = f"{DEFAULT_VOLUME_ROOT}/hf"

# DNS-1123 subdomain: a PersistentVolumeClaim name.
_CLAIM = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
# Hub repo ids: ORG/NAME of letters, digits, '-', '_', '.'.
_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


class LocationKind(StrEnum):
    LOCAL = "local"  # an absolute path (or file://) the process can see
    PVC = "pvc"  # pvc://CLAIM/PATH
    HF = "hf"  # hf://ORG/REPO[@REVISION]


class LocationError(ValueError):
    """A location string that is not one of the accepted forms; the message says which part."""


@dataclass(frozen=True)
class Location:
    """A parsed weights or tokenizer location."""

    kind: LocationKind
    uri: str  # as the user wrote it
    path: str = ""  # LOCAL: the absolute path; PVC: the path inside the claim ("" = its root)
    claim: str = ""  # PVC only
    repo: str = ""  # HF only: ORG/NAME
    revision: str | None = None  # HF only: a branch, tag or commit; None = the default branch

    def local_path(self, env: Mapping[str, str] | None = None) -> Path:
        """Where this process sees a LOCAL or PVC location (PVC: under the pod's volume root).

        HF locations have no fixed path: resolve them through the Hugging Face cache."""
        if self.kind is LocationKind.LOCAL:
            return Path(self.path)
        if self.kind is LocationKind.PVC:
            root = volume_root(env)
            return Path(pvc_mount_path(self.claim, root)) / self.path
        raise LocationError(f"{self.uri}: a Hugging Face repository has no local path until it is cached")


def volume_root(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return env.get(VOLUME_ROOT_ENV) or DEFAULT_VOLUME_ROOT


def pvc_mount_path(claim: str, root: str = DEFAULT_VOLUME_ROOT) -> str:
    """Where the operator mounts the claim `claim` in a pool pod."""
    return f"{root.rstrip('/')}/pvc/{claim}"


def parse_location(uri: str) -> Location:
    """The form of `uri`; LocationError names the part that is wrong."""
    if uri.startswith("pvc://"):
        rest = uri.removeprefix("pvc://")
        claim, _, path = rest.partition("/")
        if not _CLAIM.match(claim):
            raise LocationError(
                f"{uri}: the claim name {claim!r} is not a valid PersistentVolumeClaim name "
                "(lowercase letters, digits, '-' and '.')"
            )
        clean = PurePosixPath("/" + path).as_posix().lstrip("/")
        if ".." in PurePosixPath(clean).parts:
            raise LocationError(f"{uri}: the path inside the claim may not contain '..'")
        return Location(LocationKind.PVC, uri, path=clean, claim=claim)
    if uri.startswith("hf://"):
        rest = uri.removeprefix("hf://")
        repo, _, revision = rest.partition("@")
        parts = repo.split("/")
        if len(parts) != 2 or not all(_REPO_PART.match(p) for p in parts):
            raise LocationError(f"{uri}: expected hf://ORG/REPO or hf://ORG/REPO@REVISION")
        if "@" in rest and not revision:
            raise LocationError(f"{uri}: the revision after '@' is empty")
        return Location(LocationKind.HF, uri, repo=repo, revision=revision or None)
    path = uri.removeprefix("file://")
    if "://" in path:
        scheme = uri.split("://", 1)[0]
        raise LocationError(
            f"{uri}: the scheme {scheme}:// is not supported; use a local path, pvc://CLAIM/PATH "
            "or hf://ORG/REPO"
        )
    if not path.startswith("/"):
        raise LocationError(f"{uri}: a local location must be an absolute path (or file:///abs/path)")
    return Location(LocationKind.LOCAL, uri, path=PurePosixPath(path).as_posix())
