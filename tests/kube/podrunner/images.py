"""Container images as this machine has them: an image name maps to an entrypoint and an environment.

A real node pulls `ghcr.io/moeplane/moeplane-worker:0.1.0` and runs its ENTRYPOINT with its ENV; here
"the image" is this checkout's virtual environment (moeplane, Ray, torch) or a Debian binary. A pod
naming an image nobody registered waits in ErrImagePull, as a pod whose image does not exist does.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Image:
    """What a container of this image runs with: ENTRYPOINT, CMD and ENV (Dockerfile semantics)."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    def command(self, command: list[str] | None, args: list[str] | None) -> list[str]:
        """Kubernetes' rule: `command` replaces ENTRYPOINT (and drops CMD), `args` replaces CMD."""
        if command:
            return [*command, *(args or [])]
        return [*self.entrypoint, *(args if args is not None and args != [] else self.cmd)]


def venv_image(entrypoint: str | None = "moeplane") -> Image:
    """This checkout's environment as an image (the worker and operator images hold the same code)."""
    bin_dir = Path(sys.executable).parent
    env = {
        "PATH": f"{bin_dir}:{SYSTEM_PATH}",
        "HOME": "/tmp",  # the container's own /tmp
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "LANG": "C.UTF-8",
    }
    for key in ("RAY_USAGE_STATS_ENABLED",):
        if key in os.environ:
            env[key] = os.environ[key]
    entry = (str(bin_dir / entrypoint),) if entrypoint else ()
    return Image(entrypoint=entry, env=env)


def binary_image(name: str, *cmd: str) -> Image:
    """A Debian binary as an image (redis-server for `redis:7`)."""
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(f"{name} is not installed")
    return Image(entrypoint=(path,), cmd=cmd, env={"PATH": SYSTEM_PATH, "HOME": "/tmp"})


class Images:
    """Registered images by name pattern (fnmatch, e.g. `ghcr.io/moeplane/moeplane-worker:*`)."""

    def __init__(self) -> None:
        self._images: list[tuple[str, Image]] = []

    def register(self, pattern: str, image: Image) -> None:
        self._images.insert(0, (pattern, image))

    def find(self, name: str) -> Image | None:
        for pattern, image in self._images:
            if fnmatch.fnmatchcase(name, pattern):
                return image
        return None
