# syntax=docker/dockerfile:1.7
# The worker image: the Ray pods of the prefill and decode pools (one EP rank per GPU, NCCL,
# KV transfer) and the OpenAI-compatible frontend. It is built on a CUDA build of torch, given as
# BASE_IMAGE, so that torch, CUDA and NCCL match the cluster's drivers. Build from the repository
# root (see charts/images/README.md):
#
#   docker build -f charts/images/worker.Dockerfile \
#     --build-arg BASE_IMAGE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime \
#     -t ghcr.io/moeplane/moeplane-worker:0.1.0 .
#
# EXTRAS picks optional dependencies, e.g. --build-arg EXTRAS=mooncake (the non-CUDA Mooncake
# transfer engine; for RDMA install a CUDA build of Mooncake into your BASE_IMAGE instead).
ARG BASE_IMAGE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime

FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY moeplane/ moeplane/
COPY api/ api/
COPY operator/ operator/
COPY planner/ planner/
COPY workers/ workers/
COPY protos/ protos/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${BASE_IMAGE}
ARG EXTRAS=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Refuse a base image the workers cannot run on, before spending time on the rest.
RUN python - <<'CHECK'
import sys
import torch
assert sys.version_info >= (3, 11), f"moeplane needs Python >= 3.11; BASE_IMAGE has {sys.version}"
assert torch.version.cuda, f"BASE_IMAGE must hold a CUDA build of torch; it has {torch.__version__}"
assert torch.distributed.is_nccl_available(), "BASE_IMAGE's torch was built without NCCL"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}")
CHECK
# KubeRay's Ray pod probes call wget.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends wget \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels/ /wheels/
# The base image's CUDA torch satisfies moeplane's torch requirement, so pip keeps it; the check
# after the install proves that it did.
RUN set -e; \
    before="$(python -c 'import torch; print(torch.__version__)')"; \
    pip install "$(ls /wheels/*.whl)${EXTRAS:+[${EXTRAS}]}"; \
    rm -rf /wheels; \
    after="$(python -c 'import torch; print(torch.__version__)')"; \
    if [ "$before" != "$after" ]; then echo "pip replaced the base image's torch: $before -> $after" >&2; exit 1; fi
RUN moeplane --help >/dev/null && ray --version
# Ray writes its session files under /tmp and HOME; uid 1000 as in Ray's own images.
RUN useradd --uid 1000 --gid 100 --create-home --home-dir /home/moeplane --shell /bin/bash moeplane
ENV HOME=/home/moeplane
WORKDIR /home/moeplane
USER 1000:100
# The frontend Deployment the operator builds gives only `args` (`frontend --host ...`); KubeRay sets
# its own command (`/bin/bash -lc -- ray start ...`) in the Ray pods, so this entrypoint is theirs
# only when they ask for it.
ENTRYPOINT ["moeplane"]
LABEL org.opencontainers.image.title="moeplane-worker" \
      org.opencontainers.image.description="moeplane prefill/decode workers and frontend (CUDA torch)" \
      org.opencontainers.image.source="https://github.com/moeplane/moeplane" \
      org.opencontainers.image.licenses="Apache-2.0"
