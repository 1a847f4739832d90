"""Files a manifest names: a path, or `configmap://NAME/KEY`, one key of a ConfigMap in the
deployment's namespace that the operator mounts into the pods that read it (pure string checks;
`spec.eplb.loadFile` is the first user).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

CONFIGMAP_SCHEME = "configmap://"
LOAD_FILE_SUFFIXES = (".json", ".pt")
# A ConfigMap name is a DNS-1123 subdomain; a key is what a ConfigMap's data may be keyed by.
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_CONFIGMAP_KEY = re.compile(r"[-._a-zA-Z0-9]+")
_MAX_NAME = 253
# A bound the API server's CEL cost estimate needs for string rules; PATH_MAX on Linux.
MAX_LOAD_FILE_CHARS = 4096


@dataclass(frozen=True)
class ConfigMapKeyRef:
    """One key of a ConfigMap in the deployment's namespace (`configmap://NAME/KEY`)."""

    name: str
    key: str

    @property
    def uri(self) -> str:
        return f"{CONFIGMAP_SCHEME}{self.name}/{self.key}"


def parse_configmap_ref(value: str) -> ConfigMapKeyRef | None:
    """The reference `configmap://NAME/KEY` names; None for a plain path.

    Raises:
        ValueError: a `configmap://` value whose NAME or KEY Kubernetes would refuse.
    """
    if not value.startswith(CONFIGMAP_SCHEME):
        return None
    name, sep, key = value.removeprefix(CONFIGMAP_SCHEME).partition("/")
    if not sep:
        raise ValueError(f"{value!r} must be configmap://NAME/KEY (no /KEY after the ConfigMap name)")
    if not (len(name) <= _MAX_NAME and _DNS1123_SUBDOMAIN.fullmatch(name)):
        raise ValueError(
            f"{value!r}: ConfigMap name {name!r} must be a DNS-1123 subdomain (lower-case letters, "
            f"digits, '-' and '.', alphanumeric at both ends, at most {_MAX_NAME} characters)"
        )
    if not (len(key) <= _MAX_NAME and _CONFIGMAP_KEY.fullmatch(key)) or key in (".", ".."):
        raise ValueError(
            f"{value!r}: ConfigMap key {key!r} must be letters, digits, '-', '_' and '.' "
            f"(not '.' or '..', at most {_MAX_NAME} characters)"
        )
    return ConfigMapKeyRef(name, key)


def check_load_file(value: str) -> str:
    """`value` when it is a load-file path or ConfigMap reference of a readable format.

    Raises:
        ValueError: a malformed `configmap://` reference, or a file that is not .json or .pt.
    """
    ref = parse_configmap_ref(value)
    # The suffix picks the format (workers/eplb/static.py), so it is checked as a path's suffix.
    if PurePosixPath(ref.key if ref is not None else value).suffix.lower() not in LOAD_FILE_SUFFIXES:
        raise ValueError(f"{value!r} must end in .json or .pt (the load file's format)")
    return value
