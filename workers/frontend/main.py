"""`moeplane frontend`: the frontend as its own process, as the operator's frontend Deployment runs it.

Configuration comes from the environment the operator sets (`moeplane.api.podcontract`; flags override it):
- `MOEPLANE_ENGINE_CONFIG`: the deployment's runtime document, engine.json (the model, its served
  name and tokenizer, the serving limits, namespace and deployment), read with
  `read_engine_document` like every other process's. The tokenizer is the document's
  `model.tokenizer`, loaded as every rank loads it (`load_tokenizer`; a checkpoint location is
  resolved on this node: `MOEPLANE_VOLUME_ROOT` for pvc://, `HF_HOME` for hf://);
- `MOEPLANE_REDIS_URL`: the Redis holding the worker registry and the request-metrics stream;
- `MOEPLANE_GRPC_TOKEN` (optional): the shared token of the workers' gRPC services;
- `MOEPLANE_API_KEY` (optional, or `--api-key`): the key clients must send as a Bearer token.
It serves until SIGTERM or SIGINT, then shuts down gracefully, as a pod behind a Service must:
- for `--shutdown-delay` seconds it still serves everything that arrives, while /health answers 503
  `draining` (the Service's endpoints and kube-proxy learn of a terminating pod only after a while:
  requests sent here in that window would otherwise be refused);
- then it stops listening and gives the requests in flight or queued `--drain-timeout` seconds to
  finish; what still waits for capacity then gets a 503 and what still runs is cancelled upstream.
A second signal cuts both short. The operator sets the pod's terminationGracePeriodSeconds to
cover both.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from dataclasses import dataclass

from moeplane.api.podcontract import ENGINE_CONFIG_ENV, GRPC_TOKEN_ENV, REDIS_URL_ENV
from moeplane.api.runtime import EngineDocument
from moeplane.api.runtime_io import EngineDocumentError, read_engine_document
from moeplane.workers.document_view import DocumentView
from moeplane.workers.frontend.app import FrontendConfig
from moeplane.workers.frontend.server import FrontendServer
from moeplane.workers.grpc_security import GrpcSecurity
from moeplane.workers.model.tokenizer import Tokenizer, load_tokenizer
from moeplane.workers.runtime import checkpoint_location, serving_limits


class FrontendSetupError(ValueError):
    """Missing or unusable configuration; the message names the variable or file."""


@dataclass(frozen=True)
class Settings(DocumentView):
    document: EngineDocument
    redis_url: str
    grpc_token: str | None


def load_settings(engine_config: str | None, redis_url: str | None, token: str | None) -> Settings:
    if not engine_config:
        raise FrontendSetupError(f"no engine config: set {ENGINE_CONFIG_ENV} or pass --engine-config")
    if not redis_url:
        raise FrontendSetupError(f"no Redis: set {REDIS_URL_ENV} or pass --redis-url")
    try:
        document = read_engine_document(engine_config)
    except EngineDocumentError as exc:
        raise FrontendSetupError(str(exc)) from None
    return Settings(document, redis_url, token or None)


def frontend_config(
    document: EngineDocument, request_timeout_s: float | None = None, api_key: str | None = None
) -> FrontendConfig:
    """The frontend's limits from the document's spec.serving (`request_timeout_s` overrides one);
    /v1/models' `root` is the checkpoint's location (random weights: the served name)."""
    serving = document.serving
    return FrontendConfig(
        served_model=document.model.served_model_name,
        max_model_len=serving.max_model_len,
        request_timeout_s=request_timeout_s or serving.request_timeout_seconds,
        api_key=api_key,
        model_root=checkpoint_location(document),
    )


def frontend_tokenizer(document: EngineDocument) -> Tokenizer:
    """The document's tokenizer (`model.tokenizer`), as every rank of the deployment loads it;
    FrontendSetupError names the location when it cannot be loaded."""
    location = document.model.tokenizer
    try:
        return load_tokenizer(location, document.model.architecture)
    except ValueError as exc:  # CheckpointError, HFTokenizerError, TokenizerError
        raise FrontendSetupError(f"cannot load the tokenizer (model.tokenizer {location}): {exc}") from None


async def serve(
    settings: Settings,
    host: str,
    port: int,
    request_timeout_s: float | None,
    api_key: str | None = None,
    shutdown_delay_s: float = 0.0,
    drain_timeout_s: float = 0.0,
) -> None:
    tokenizer = frontend_tokenizer(settings.document)
    config = frontend_config(settings.document, request_timeout_s, api_key)
    # The admission queue and request deadline: spec.serving (maxQueuedRequests,
    # queueTimeoutSeconds, requestTimeoutSeconds or the flag's timeout).
    limits = serving_limits(settings.document.serving, config.request_timeout_s)
    server = FrontendServer(
        config,
        settings.redis_url,
        settings.keys,
        tokenizer,
        GrpcSecurity(token=settings.grpc_token),
        limits=limits,
        drain_timeout_s=drain_timeout_s,
    )
    stop, hurry = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            hurry.set()
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    await server.start(host, port)
    print(
        f"moeplane frontend: serving {settings.served_model!r} on {server.url}/v1 "
        f"(registry {settings.keys.prefix})",
        flush=True,
    )
    try:
        await stop.wait()
        if shutdown_delay_s > 0:
            server.drain(f"shutting down in {shutdown_delay_s:g} s")
            print(f"moeplane frontend: draining; still serving for {shutdown_delay_s:g} s", flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(hurry.wait(), shutdown_delay_s)
    finally:
        await server.stop(hurry=hurry.is_set())
    print("moeplane frontend: stopped", flush=True)


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(
            args.engine_config or os.environ.get(ENGINE_CONFIG_ENV),
            args.redis_url or os.environ.get(REDIS_URL_ENV),
            os.environ.get(GRPC_TOKEN_ENV),
        )
        api_key = getattr(args, "api_key", None) or os.environ.get("MOEPLANE_API_KEY") or None
        asyncio.run(
            serve(
                settings,
                args.host,
                args.port,
                args.request_timeout,
                api_key,
                shutdown_delay_s=args.shutdown_delay,
                drain_timeout_s=args.drain_timeout,
            )
        )
    except FrontendSetupError as exc:
        print(f"moeplane frontend: {exc}", file=sys.stderr)
        return 1
    return 0
