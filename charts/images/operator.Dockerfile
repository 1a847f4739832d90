# syntax=docker/dockerfile:1.7
# The control-plane image: `moeplane operator`, `moeplane planner` (with the dashboard) and the
# chart's `helm test` pod. Build from the repository root (see charts/images/README.md):
#
#   docker build -f charts/images/operator.Dockerfile -t ghcr.io/moeplane/moeplane:0.1.0 .
#
# The control plane never touches a GPU, so torch (a hard dependency of the package) comes from
# the CPU wheel index: the CUDA wheels would add gigabytes for nothing.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
# The package's sources only (operator.Dockerfile.dockerignore keeps the rest out of the context).
COPY pyproject.toml README.md ./
COPY moeplane/ moeplane/
COPY api/ api/
COPY operator/ operator/
COPY planner/ planner/
COPY workers/ workers/
COPY protos/ protos/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
COPY --from=build /wheels/ /wheels/
# Installing the wheel keeps the CPU torch above (it satisfies the requirement); `moeplane --help`
# imports every subcommand, so a missing dependency fails the build, not the pod.
RUN pip install /wheels/*.whl \
 && rm -rf /wheels \
 && moeplane --help >/dev/null \
 && python -c "import torch; assert torch.version.cuda is None, 'a CUDA torch slipped in'"
# The chart's podSecurityContext runs as 65532 (values: podSecurityContext.runAsUser) with a
# read-only root filesystem and an emptyDir on /tmp, hence HOME=/tmp.
RUN groupadd --gid 65532 moeplane \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin moeplane
ENV HOME=/tmp
WORKDIR /tmp
USER 65532:65532
LABEL org.opencontainers.image.title="moeplane" \
      org.opencontainers.image.description="moeplane operator, planner and dashboard" \
      org.opencontainers.image.source="https://github.com/moeplane/moeplane" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["moeplane"]
CMD ["--help"]
