"""What the kubelet derives from a Pod spec before starting a container (pure but for file writes).

- `resolve_env`: kubelet's makeEnvironmentVariables: `envFrom` (ConfigMaps, Secrets, prefixes), then
  `env` in order with `$(VAR)` expansion over what came before, `valueFrom` (fieldRef,
  resourceFieldRef, configMapKeyRef, secretKeyRef, with `optional`). A missing reference is the
  kubelet's CreateContainerConfigError with its message.
- `expand`: `$(VAR)` in command and args (`$$` escapes).
- `materialise_volume`: configMap, secret (items, optional), emptyDir (Memory-backed under /dev/shm),
  persistentVolumeClaim (a directory the test registered for the claim), downwardAPI and projected
  sources, as local directories. A missing ConfigMap or Secret is the kubelet's FailedMount.
- `PathMap`: a container's mounts. Those under /tmp, /dev/shm and /run are bind-mounted into the container's
  own mount namespace (`binds`); every other one appears in a per-container view directory (a
  symlink at the mount path), and `rewrite` points any absolute path in a string that is inside a
  mount, or above one and absent on this machine (`MOEPLANE_VOLUME_ROOT=/mnt/moeplane`), into it.
"""

from __future__ import annotations

import base64
import math
import os
import posixpath
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.kube.podrunner.quantity import parse_quantity

Obj = dict[str, Any]
Lookup = Callable[[str, str, str], Obj | None]  # (kind, namespace, name) -> object or None
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_REF = re.compile(r"\$\$|\$\(([-._a-zA-Z0-9]+)\)")
# Absolute paths inside a string: after its start, whitespace, '=', ':', a quote, '(' or ','.
_PATH = re.compile(r"(?:(?<=^)|(?<=[\s=:'\"(,]))(/[^\s'\"`;,)|&<>]*)")
BIND_PREFIXES = ("/tmp", "/dev/shm", "/run", "/var/run")


class ConfigError(Exception):
    """CreateContainerConfigError: the kubelet cannot build the container's environment."""


class MountError(Exception):
    """FailedMount: a volume cannot be set up (the pod stays in ContainerCreating)."""


class Unschedulable(Exception):
    """The pod cannot be placed (e.g. its PersistentVolumeClaim does not exist)."""


# ---- $(VAR) -----------------------------------------------------------------------------------------
def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' expansion (third_party/forked/golang/expansion): $(VAR) if defined, $$ -> $."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _REF.sub(sub, text)


# ---- env --------------------------------------------------------------------------------------------
def _decode(secret: Mapping[str, Any]) -> dict[str, str]:
    out = {k: base64.b64decode(v).decode(errors="replace") for k, v in (secret.get("data") or {}).items()}
    out.update({k: str(v) for k, v in (secret.get("stringData") or {}).items()})
    return out


def field_value(pod: Mapping[str, Any], path: str) -> str:
    meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
    m = re.match(r"^metadata\.(labels|annotations)\['(.+)'\]$", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName") or "default",
        "status.hostIP": status.get("hostIP"),
        "status.podIP": status.get("podIP"),
        "status.podIPs": ",".join(p.get("ip", "") for p in status.get("podIPs") or []),
        "status.hostIPs": ",".join(p.get("ip", "") for p in status.get("hostIPs") or []),
    }
    if path not in simple:
        raise ConfigError(f"unsupported fieldRef fieldPath {path!r}")
    return str(simple[path] or "")


@dataclass(frozen=True)
class NodeCapacity:
    cpu: str = str(os.cpu_count() or 1)
    memory: str = str(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def resource_value(container: Mapping[str, Any], ref: Mapping[str, Any], node: NodeCapacity) -> str:
    """resourceFieldRef: limits fall back to the node's allocatable, requests to 0 (cpu: limits)."""
    resource = str(ref.get("resource", ""))
    kind, _, name = resource.partition(".")
    res = container.get("resources") or {}
    amount = (res.get(kind) or {}).get(name)
    if amount is None and kind == "requests":
        amount = (res.get("limits") or {}).get(name)
    if amount is None:
        amount = {"cpu": node.cpu, "memory": node.memory}.get(name, "0")
    divisor = parse_quantity(ref.get("divisor") or "1")
    return str(math.ceil(parse_quantity(amount) / divisor))


def resolve_env(
    pod: Mapping[str, Any], container: Mapping[str, Any], lookup: Lookup, node: NodeCapacity | None = None
) -> dict[str, str]:
    ns = pod["metadata"]["namespace"]
    node = node or NodeCapacity()
    env: dict[str, str] = {}
    for source in container.get("envFrom") or ():
        prefix = str(source.get("prefix") or "")
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            ref = source.get(key)
            if ref is None:
                continue
            obj = lookup(kind, ns, ref["name"])
            if obj is None:
                if ref.get("optional"):
                    continue
                raise ConfigError(f'{kind.lower()} "{ref["name"]}" not found')
            data = (
                _decode(obj) if kind == "Secret" else {k: str(v) for k, v in (obj.get("data") or {}).items()}
            )
            for k, v in data.items():
                if _ENV_NAME.match(prefix + k):
                    env[prefix + k] = v
    for var in container.get("env") or ():
        name = var["name"]
        if "value" in var or "valueFrom" not in var:
            env[name] = expand(str(var.get("value", "")), env)
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            env[name] = field_value(pod, source["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in source:
            env[name] = resource_value(container, source["resourceFieldRef"], node)
        else:
            kind, ref = (
                ("ConfigMap", source.get("configMapKeyRef"))
                if "configMapKeyRef" in source
                else ("Secret", source.get("secretKeyRef"))
            )
            if ref is None:
                raise ConfigError(f"env {name}: unsupported valueFrom {sorted(source)}")
            obj = lookup(kind, ns, ref["name"])
            values: dict[str, str] | None = (
                None
                if obj is None
                else (
                    _decode(obj)
                    if kind == "Secret"
                    else {k: str(v) for k, v in (obj.get("data") or {}).items()}
                )
            )
            if values is None or ref["key"] not in values:
                if ref.get("optional"):
                    continue
                if values is None:
                    raise ConfigError(f'{kind.lower()} "{ref["name"]}" not found')
                raise ConfigError(f"couldn't find key {ref['key']} in {kind} {ns}/{ref['name']}")
            env[name] = values[ref["key"]]
    return env


# ---- volumes -------------------------------------------------------------------------------------------
def _write_items(
    target: Path,
    data: Mapping[str, bytes],
    items: Sequence[Mapping[str, Any]] | None,
    what: str,
    optional: bool,
) -> None:
    chosen: dict[str, bytes] = {}
    if items:
        for item in items:
            if item["key"] not in data:
                if optional:
                    continue
                raise MountError(f"{what} references non-existent config key: {item['key']}")
            chosen[str(item["path"])] = data[item["key"]]
    else:
        chosen = dict(data)
    for rel, content in chosen.items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_bytes() != content:
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(content)
            tmp.replace(path)
    keep = {target / rel for rel in chosen}
    for path in list(target.rglob("*")):
        if path.is_file() and path not in keep:
            path.unlink()


def _configmap_bytes(cm: Mapping[str, Any]) -> dict[str, bytes]:
    out = {k: str(v).encode() for k, v in (cm.get("data") or {}).items()}
    out.update({k: base64.b64decode(v) for k, v in (cm.get("binaryData") or {}).items()})
    return out


def _secret_bytes(secret: Mapping[str, Any]) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}


def materialise_volume(
    pod: Mapping[str, Any],
    volume: Mapping[str, Any],
    target: Path,
    lookup: Lookup,
    claims: Mapping[tuple[str, str], Path],
    token: str | None = None,
) -> Path:
    """Set up `volume` and return the directory that holds it (`target` unless it is a claim's).

    `token` is the pod's service account token (a projected `serviceAccountToken` source)."""
    ns = pod["metadata"]["namespace"]
    name = volume["name"]
    if "persistentVolumeClaim" in volume:
        claim = volume["persistentVolumeClaim"]["claimName"]
        if lookup("PersistentVolumeClaim", ns, claim) is None:
            raise Unschedulable(f'persistentvolumeclaim "{claim}" not found')
        path = claims.get((ns, claim))
        if path is None:
            raise Unschedulable(f'pod has unbound immediate PersistentVolumeClaims (claim "{claim}")')
        return path
    target.mkdir(parents=True, exist_ok=True)
    if "emptyDir" in volume:
        return target
    if "configMap" in volume:
        src = volume["configMap"]
        cm = lookup("ConfigMap", ns, src["name"])
        if cm is None:
            if src.get("optional"):
                return target
            raise MountError(
                f'MountVolume.SetUp failed for volume "{name}" : configmap "{src["name"]}" not found'
            )
        _write_items(
            target,
            _configmap_bytes(cm),
            src.get("items"),
            f'configmap "{src["name"]}"',
            bool(src.get("optional")),
        )
        return target
    if "secret" in volume:
        src = volume["secret"]
        secret = lookup("Secret", ns, src["secretName"])
        if secret is None:
            if src.get("optional"):
                return target
            raise MountError(
                f'MountVolume.SetUp failed for volume "{name}" : secret "{src["secretName"]}" not found'
            )
        _write_items(
            target,
            _secret_bytes(secret),
            src.get("items"),
            f'secret "{src["secretName"]}"',
            bool(src.get("optional")),
        )
        return target
    if "downwardAPI" in volume:
        data = {
            str(i["path"]): field_value(pod, i["fieldRef"]["fieldPath"]).encode()
            for i in volume["downwardAPI"].get("items") or ()
            if "fieldRef" in i
        }
        _write_items(target, data, None, "downwardAPI", False)
        return target
    if "projected" in volume:
        files: dict[str, bytes] = {}
        for source in volume["projected"].get("sources") or ():
            if "configMap" in source:
                cm = lookup("ConfigMap", ns, source["configMap"]["name"])
                if cm is None and not source["configMap"].get("optional"):
                    raise MountError(f'configmap "{source["configMap"]["name"]}" not found')
                raw = _configmap_bytes(cm or {})
                items = source["configMap"].get("items")
                files.update(
                    {str(i["path"]): raw[i["key"]] for i in items if i["key"] in raw} if items else raw
                )
            elif "secret" in source:
                secret = lookup("Secret", ns, source["secret"]["name"])
                if secret is None and not source["secret"].get("optional"):
                    raise MountError(f'secret "{source["secret"]["name"]}" not found')
                raw = _secret_bytes(secret or {})
                items = source["secret"].get("items")
                files.update(
                    {str(i["path"]): raw[i["key"]] for i in items if i["key"] in raw} if items else raw
                )
            elif "serviceAccountToken" in source:
                if token is None:
                    raise MountError(f"projected volume {name}: the pod has no service account token")
                files[str(source["serviceAccountToken"].get("path") or "token")] = token.encode()
            elif "downwardAPI" in source:
                files.update(
                    {
                        str(i["path"]): field_value(pod, i["fieldRef"]["fieldPath"]).encode()
                        for i in source["downwardAPI"].get("items") or ()
                        if "fieldRef" in i
                    }
                )
            else:
                raise MountError(
                    f"projected volume {name}: source {sorted(source)} is not played by the runner"
                )
        _write_items(target, files, None, f"projected volume {name}", False)
        return target
    raise MountError(f"volume {name}: {sorted(k for k in volume if k != 'name')} is not played by the runner")


# ---- paths ----------------------------------------------------------------------------------------------
def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


@dataclass
class PathMap:
    """A container's view of its mounts (see the module docstring)."""

    view_root: Path
    mounts: list[tuple[str, Path]]  # (mountPath, host path), in the pod's order

    @property
    def binds(self) -> list[tuple[Path, str]]:
        return [(src, dst) for dst, src in self.mounts if any(_under(dst, p) for p in BIND_PREFIXES)]

    @property
    def rewritten(self) -> list[tuple[str, Path]]:
        return [(dst, src) for dst, src in self.mounts if not any(_under(dst, p) for p in BIND_PREFIXES)]

    def build(self) -> None:
        """Symlink every rewritten mount at its path under `view_root`."""
        for dst, src in self.rewritten:
            link = self.view_root / dst.lstrip("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() or link.exists():
                if link.is_dir() and not link.is_symlink():
                    shutil.rmtree(link)
                else:
                    link.unlink()
            link.symlink_to(src)

    def maps(self, path: str) -> bool:
        norm = posixpath.normpath(path)
        for dst, _ in self.rewritten:
            if _under(norm, dst):
                return True
            if _under(dst, norm) and norm not in ("/", "") and not os.path.exists(norm):
                return True
        return False

    def rewrite(self, text: str) -> str:
        """`text` with every absolute path that names a rewritten mount pointed into the view."""

        def sub(m: re.Match[str]) -> str:
            path = m.group(1)
            return f"{self.view_root}{path}" if self.maps(path) else path

        return _PATH.sub(sub, text)
