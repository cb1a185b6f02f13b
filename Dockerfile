# syntax=docker/dockerfile:1.7
# The training image: CUDA runtime + torch (CUDA build) + DeepSpeed with its CUDA ops compiled
# ahead of time + this package, running as the non-root user 1000.
#
#   docker build -t ghcr.io/vlm-platform/vlm-platform:0.1.0 .
#
# Two stages: DeepSpeed's fused ops need nvcc to compile, which only the (large) devel image
# has; we build a DeepSpeed wheel there and install it into the (smaller) runtime image, so
# pods never compile ops at start-up. Every version is pinned: bump them together.
# No flash-attn: the shipped configs use torch's sdpa attention. tests/test_image.py reads this
# file and keeps every shipped config's needs (attention, DeepSpeed, s3fs, a CUDA torch) and
# every module the package imports within what it installs.
# Not built in CI (no Docker there); the pins are the contract.

ARG CUDA_TAG=12.8.1-cudnn
ARG UBUNTU=ubuntu24.04
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG DEEPSPEED_VERSION=0.18.2

# ---------------------------------------------------------------- build: DeepSpeed wheel with ops
FROM nvidia/cuda:${CUDA_TAG}-devel-${UBUNTU} AS deepspeed
ARG TORCH_VERSION TORCH_INDEX DEEPSPEED_VERSION
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-dev git \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --no-cache-dir --index-url ${TORCH_INDEX} torch==${TORCH_VERSION} \
    && pip install --no-cache-dir wheel ninja packaging
# A100 (8.0), L40S/4090 (8.9), H100/H200 (9.0): the ops the ZeRO presets use.
ENV TORCH_CUDA_ARCH_LIST="8.0;8.9;9.0" DS_BUILD_FUSED_ADAM=1 DS_BUILD_CPU_ADAM=1 DS_BUILD_UTILS=1
RUN pip wheel --no-cache-dir --no-deps --no-build-isolation -w /wheels deepspeed==${DEEPSPEED_VERSION}

# ---------------------------------------------------------------- runtime
FROM nvidia/cuda:${CUDA_TAG}-runtime-${UBUNTU}
ARG TORCH_VERSION TORCH_INDEX
LABEL org.opencontainers.image.title="vlm-platform" \
      org.opencontainers.image.description="Kubernetes-native training of vision-language models" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HOME=/cache/huggingface \
    TORCH_EXTENSIONS_DIR=/cache/torch_extensions
RUN pip install --index-url ${TORCH_INDEX} torch==${TORCH_VERSION}
COPY --from=deepspeed /wheels /wheels
RUN pip install /wheels/deepspeed-*.whl && rm -rf /wheels

# Dependencies first (cached across source edits), then the package itself.
WORKDIR /opt/vlm-platform
COPY pyproject.toml README.md ./
COPY vlm_core ./vlm_core
COPY operators ./operators
COPY pipelines ./pipelines
# torch==2.13.0 in pyproject is satisfied by the CUDA build installed above (2.13.0+cu128).
RUN pip install . && vlm --help >/dev/null

# Non-root, as the chart's securityContext expects (runAsUser 1000, fsGroup 1000). Ubuntu 24.04
# images ship a user `ubuntu` with that uid: replace it with ours.
RUN userdel --remove ubuntu \
    && groupadd --gid 1000 vlm \
    && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /tmp vlm \
    && mkdir -p /cache && chown 1000:1000 /cache
USER 1000:1000
WORKDIR /tmp
ENTRYPOINT []
CMD ["vlm", "--help"]
