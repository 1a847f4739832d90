"""A weights or tokenizer location -> a checkpoint directory on this node.

`resolve_checkpoint(location)` is the loader side of `moeplane.api.locations`: a local path is
used as it is, `pvc://CLAIM/PATH` is where the operator mounts the claim in this pod, and
`hf://ORG/REPO[@REVISION]` is a snapshot in the Hugging Face cache (`HF_HOME`, or
`HF_HUB_CACHE`), found with `huggingface_hub.snapshot_download`. With `HF_HUB_OFFLINE` set, only
the cache is read; otherwise a cache miss downloads. Every error names the location.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from moeplane.api.locations import Location, LocationError, LocationKind, parse_location

_TRUE = {"1", "true", "yes", "on"}


class CheckpointError(ValueError):
    """A location that cannot be resolved to a readable checkpoint directory."""


def hub_offline(env: Mapping[str, str] | None = None) -> bool:
    """Whether `HF_HUB_OFFLINE` forbids network access (read when asked, not at import)."""
    env = os.environ if env is None else env
    return env.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def resolve_checkpoint(location: str | Location, env: Mapping[str, str] | None = None) -> Path:
    """The local directory a location names; CheckpointError says which location and why."""
    try:
        loc = location if isinstance(location, Location) else parse_location(location)
    except LocationError as exc:
        raise CheckpointError(str(exc)) from None
    if loc.kind is LocationKind.HF:
        return _hf_snapshot(loc, env)
    path = loc.local_path(env)
    if not path.is_dir():
        where = ""
        if loc.kind is LocationKind.PVC:
            where = f" (the claim {loc.claim!r} is mounted at {path.parent})"
        what = "is not a directory" if path.exists() else "does not exist"
        raise CheckpointError(f"{loc.uri}: {path} {what}{where}")
    return path


def _hf_snapshot(loc: Location, env: Mapping[str, str] | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    env = os.environ if env is None else env
    offline = hub_offline(env)
    cache_dir = _cache_dir(env)
    revision = loc.revision or "main"
    try:
        path = snapshot_download(
            repo_id=loc.repo, revision=revision, cache_dir=cache_dir, local_files_only=offline
        )
    except LocalEntryNotFoundError:
        how = (
            "HF_HUB_OFFLINE is set, so nothing is downloaded" if offline
            else "the Hub could not be reached to download it"
        )
        raise CheckpointError(
            f"{loc.uri}: {loc.repo} (revision {revision}) is not in the Hugging Face cache at {cache_dir} "
            f"and {how}; fill the cache on a machine with network access (`HF_HOME={_home(env)} "
            f"huggingface-cli download {loc.repo}"
            f"{f' --revision {loc.revision}' if loc.revision else ''}`) and copy it here, or allow "
            "downloads (unset HF_HUB_OFFLINE)"
        ) from None
    except (RepositoryNotFoundError, HFValidationError) as exc:
        raise CheckpointError(f"{loc.uri}: {exc}") from None
    except OSError as exc:
        raise CheckpointError(f"{loc.uri}: cannot fetch {loc.repo} ({exc})") from None
    return Path(path)


def _home(env: Mapping[str, str]) -> str:
    return env.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")


def _cache_dir(env: Mapping[str, str]) -> str:
    """The hub cache: HF_HUB_CACHE, else HF_HOME/hub (as huggingface_hub, read per call)."""
    return env.get("HF_HUB_CACHE") or str(Path(_home(env)) / "hub")
