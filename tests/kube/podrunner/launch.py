"""Turning a container of a pod into the process that runs it: image, env, mounts, command, argv."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.kube.podrunner.containers import ContainerProcess
from tests.kube.podrunner.images import Images
from tests.kube.podrunner.podspec import MountError, PathMap, expand, resolve_env
from tests.kube.podrunner.podstate import ContainerState, PodIO
from tests.kube.podrunner.sandbox import Sandbox, marker_env

Obj = dict[str, Any]


@dataclass(frozen=True)
class PodContext:
    """One pod as the kubelet runs it: its object, address, directory and volumes."""

    pod: Obj
    ip: str
    dir: Path
    volume_dirs: Mapping[str, Path]
    pause_pid: int | None

    @property
    def namespace(self) -> str:
        return str(self.pod["metadata"]["namespace"])

    @property
    def name(self) -> str:
        return str(self.pod["metadata"]["name"])


def path_map(ctx: PodContext, state: ContainerState) -> PathMap:
    """The container's mounts: volume directories (a subPath inside them) at their mount paths."""
    mounts = []
    for m in state.spec.get("volumeMounts") or ():
        src = ctx.volume_dirs.get(m["name"])
        if src is None:
            raise MountError(f'volume "{m["name"]}" is not defined in the pod')
        if m.get("subPath"):
            src = src / m["subPath"]
            if not src.exists():
                src.mkdir(parents=True)
        mounts.append((str(m["mountPath"]), src))
    return PathMap(ctx.dir / "containers" / state.name / "view", mounts)



REPO_ROOT = Path(__file__).resolve().parents[3]


def image_roots_under_tmp() -> list[Path]:
    """This checkout and its virtual environment, where they lie under /tmp (outermost only)."""
    roots = sorted({REPO_ROOT, Path(sys.prefix).resolve()})
    under_tmp = [r for r in roots if r.is_relative_to("/tmp")]
    return [r for r in under_tmp if not any(r != o and r.is_relative_to(o) for o in under_tmp)]


def image_binds(stage: Path) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]]]:
    """The "image's" files (this checkout and its virtual environment) where they lie under /tmp
    (a CI clone in /tmp, say), kept visible at the same path over the container's private /tmp, as
    a real image carries its files whatever the container mounts. A bind's source is resolved when
    it is mounted, so each such root is first bound to `stage` (outside /tmp), then back from there
    once the private /tmp is in place: (binds before the /tmp bind, binds after it)."""
    before: list[tuple[Path, str]] = []
    after: list[tuple[Path, str]] = []
    for i, root in enumerate(image_roots_under_tmp()):
        staged = stage / str(i)
        staged.mkdir(parents=True, exist_ok=True)
        before.append((root, str(staged)))
        after.append((staged, str(root)))
    return before, after


def prepare(
    ctx: PodContext, state: ContainerState, sandbox: Sandbox, images: Images, io: PodIO
) -> ContainerProcess:
    """The process of `state`'s container (not started). LookupError: an unknown image;
    ConfigError / MountError: what the kubelet reports as CreateContainer(Config)Error."""
    image = images.find(str(state.spec.get("image", "")))
    if image is None:
        raise LookupError(f'Failed to pull image "{state.spec.get("image")}": not registered with the runner')
    env = resolve_env(ctx.pod, state.spec, io.lookup())
    paths = path_map(ctx, state)
    paths.build()
    env = {k: paths.rewrite(v) for k, v in env.items()}
    command = [expand(c, env) for c in image.command(state.spec.get("command"), state.spec.get("args"))]
    command = [paths.rewrite(c) for c in command]
    cdir = ctx.dir / "containers" / state.name
    tmp = cdir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    before, after = image_binds(cdir / "image")
    # The image comes last: a volume the pod mounts at /tmp (an emptyDir) must not hide it.
    binds: list[tuple[Path, str]] = [*before, (tmp, "/tmp"), *paths.binds, *after]
    hostname = str(ctx.pod["spec"].get("hostname") or ctx.name)
    full_env = {
        **image.env,
        "HOSTNAME": hostname,
        **io.node_env(),
        **env,
        **sandbox.network_env(ctx.ip, ctx.namespace),
        **marker_env(sandbox.runner_id, str(ctx.pod["metadata"]["uid"]), state.name),
    }
    state.env = full_env
    workdir = state.spec.get("workingDir")
    cwd = Path(paths.rewrite(workdir)) if workdir and paths.maps(workdir) else cdir / "work"
    argv = sandbox.container_argv(hostname, binds, command, ctx.pause_pid)
    tag = full_env["MOEPLANE_PODRUNNER"]
    return ContainerProcess(argv, full_env, cwd, ctx.dir / "logs" / f"{state.name}.log", tag)
