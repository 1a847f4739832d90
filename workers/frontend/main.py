"""`moeplane frontend`: the frontend as its own process, as the operator's frontend Deployment runs it.

Configuration comes from the environment the operator sets (flags override it):
- `MOEPLANE_ENGINE_CONFIG`: the deployment's engine.json (model architecture, served model name,
  tokenizer, namespace and deployment);
- `MOEPLANE_REDIS_URL`: the Redis holding the worker registry and the request-metrics stream;
- `MOEPLANE_GRPC_TOKEN` (optional): the shared token of the workers' gRPC services;
- `MOEPLANE_API_KEY` (optional, or `--api-key`): the key clients must send as a Bearer token.
It serves until SIGTERM or SIGINT, then drains: in-flight requests are cancelled upstream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from moeplane.api.arch import ModelArch
from moeplane.workers.frontend.app import FrontendConfig
from moeplane.workers.frontend.server import FrontendServer
from moeplane.workers.grpc_security import GrpcSecurity
from moeplane.workers.model.tokenizer import TokenizerError, tokenizer_for
from pydantic import ValidationError

from moeplane.bus.keys import DeploymentKeys


class FrontendSetupError(ValueError):
    """Missing or unusable configuration; the message names the variable or file."""


@dataclass(frozen=True)
class Settings:
    keys: DeploymentKeys
    arch: ModelArch
    served_model: str
    redis_url: str
    grpc_token: str | None


def load_settings(engine_config: str | None, redis_url: str | None, token: str | None) -> Settings:
    if not engine_config:
        raise FrontendSetupError("no engine config: set MOEPLANE_ENGINE_CONFIG or pass --engine-config")
    if not redis_url:
        raise FrontendSetupError("no Redis: set MOEPLANE_REDIS_URL or pass --redis-url")
    try:
        doc = json.loads(Path(engine_config).read_text())
        model = doc["model"]
        arch = ModelArch.model_validate(model["architecture"])
        keys = DeploymentKeys(doc["namespace"], doc["deployment"])
    except (OSError, json.JSONDecodeError) as exc:
        raise FrontendSetupError(f"cannot read the engine config {engine_config}: {exc}") from None
    except KeyError as exc:
        raise FrontendSetupError(f"engine config {engine_config} has no {exc.args[0]!r}") from None
    except ValidationError as exc:
        raise FrontendSetupError(f"engine config {engine_config}: model.architecture: {exc}") from None
    return Settings(keys, arch, model.get("servedModelName") or keys.deployment, redis_url, token or None)


async def serve(
    settings: Settings, host: str, port: int, request_timeout_s: float, api_key: str | None = None
) -> None:
    try:
        tokenizer = tokenizer_for(settings.arch)
    except TokenizerError as exc:
        raise FrontendSetupError(str(exc)) from None
    config = FrontendConfig(
        served_model=settings.served_model, max_model_len=settings.arch.max_position_embeddings,
        request_timeout_s=request_timeout_s, api_key=api_key,
    )
    server = FrontendServer(
        config, settings.redis_url, settings.keys, tokenizer, GrpcSecurity(token=settings.grpc_token)
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.start(host, port)
    print(f"moeplane frontend: serving {settings.served_model!r} on {server.url}/v1 "
          f"(registry {settings.keys.prefix})", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop()
    print("moeplane frontend: stopped", flush=True)


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(
            args.engine_config or os.environ.get("MOEPLANE_ENGINE_CONFIG"),
            args.redis_url or os.environ.get("MOEPLANE_REDIS_URL"),
            os.environ.get("MOEPLANE_GRPC_TOKEN"),
        )
        api_key = getattr(args, "api_key", None) or os.environ.get("MOEPLANE_API_KEY") or None
        asyncio.run(serve(settings, args.host, args.port, args.request_timeout, api_key))
    except FrontendSetupError as exc:
        print(f"moeplane frontend: {exc}", file=sys.stderr)
        return 1
    return 0
