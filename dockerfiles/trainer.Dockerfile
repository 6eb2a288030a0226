# syntax=docker/dockerfile:1
# The helixrun trainer: torch, transformers, peft, DeepSpeed (ops prebuilt),
# bitsandbytes and `helixrun-train`. Trainer pods run the PyTorchJob's command
# (`torchrun --no-python helixrun-train --config /etc/helixrun/config.yaml`), so
# the image has no ENTRYPOINT.
#
#   docker build -f dockerfiles/trainer.Dockerfile -t ghcr.io/helixrun/trainer:0.1.0 .
#
# Built from the repository root. Python pins come from operator/pyproject.toml
# and trainer/pyproject.toml (installed as CI installs them) plus the two
# requirements files next to this one; tests/images checks they agree.

# torch 2.15.0's PyPI wheel is built against CUDA 13.2 (it depends on
# cuda-toolkit==13.2.2); DeepSpeed refuses to build ops with an nvcc whose major
# version differs from torch's, so the builder's CUDA follows torch.
ARG CUDA_VERSION=13.2.2
ARG UBUNTU_VERSION=24.04
# Ubuntu 24.04 ships Python 3.12; the project targets 3.11 like CI and the
# operator image, so the interpreter is a pinned python-build-standalone via uv.
ARG PYTHON_VERSION=3.11.18
ARG UV_VERSION=0.13.9

FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv

FROM nvidia/cuda:${CUDA_VERSION}-cudnn-devel-ubuntu${UBUNTU_VERSION} AS builder
ARG PYTHON_VERSION
# No GPU at build time: name the architectures, or kernels fail at run time with
# "no kernel image is available". 7.5 = RTX 2080 Super, 8.0 = A100/A800,
# 8.6 = RTX 3080, 8.9 = RTX 4090, 9.0 = H100.
ARG TORCH_CUDA_ARCH_LIST="7.5 8.0 8.6 8.9 9.0"
# nvcc is memory-hungry: cap parallel compile jobs.
ARG MAX_JOBS=4
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Base images are pinned by exact tag; apt versions are not (see .hadolint.yaml).
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ libaio-dev \
 && rm -rf /var/lib/apt/lists/*
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    UV_NO_CACHE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN uv python install "${PYTHON_VERSION}" \
 && uv venv --seed --python "${PYTHON_VERSION}" /opt/helixrun
ENV PATH=/opt/helixrun/bin:$PATH \
    VIRTUAL_ENV=/opt/helixrun
WORKDIR /src
COPY dockerfiles/requirements-trainer-build.txt dockerfiles/requirements-trainer-gpu.txt ./dockerfiles/
RUN pip install --no-cache-dir -r dockerfiles/requirements-trainer-build.txt
# 1. The project, with its own pins (torch, transformers, peft, ...): as CI installs it.
COPY operator/ ./operator/
COPY trainer/ ./trainer/
RUN pip install --no-cache-dir ./operator ./trainer
# 2. DeepSpeed compiled against that torch with its optimizer ops prebuilt (the
#    root filesystem is read-only at run time, so no JIT builds), and bitsandbytes.
ENV DS_ACCELERATOR=cuda \
    DS_BUILD_OPS=0 \
    DS_BUILD_CPU_ADAM=1 \
    DS_BUILD_FUSED_ADAM=1 \
    DS_BUILD_UTILS=1 \
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST} \
    MAX_JOBS=${MAX_JOBS}
# DeepSpeed skips an incompatible op with only a warning: fail the build instead.
RUN pip install --no-cache-dir --no-build-isolation -r dockerfiles/requirements-trainer-gpu.txt \
 && python -c "from deepspeed.git_version_info import installed_ops as ops; \
missing = [op for op in ('cpu_adam', 'fused_adam', 'utils') if not ops.get(op)]; \
assert not missing, f'DeepSpeed ops not prebuilt: {missing}'" \
 && python -c "import helixrun_trainer, transformers, peft, bitsandbytes"

# Runtime: CUDA user-space libraries come with torch's wheels; the base image
# adds the driver-compatibility setup. gcc/libc6-dev stay because Triton
# compiles its small launcher stubs at run time; libgomp1 is what DeepSpeed's
# CPU Adam links; libaio for DeepSpeed's NVMe offload; wordnet-base is the
# WordNet database GeneChat's METEOR reads (helixrun_trainer/evaluation/text.py).
FROM nvidia/cuda:${CUDA_VERSION}-base-ubuntu${UBUNTU_VERSION}
LABEL org.opencontainers.image.title="helixrun-trainer" \
      org.opencontainers.image.description="helixrun trainer runtime (torch, transformers, peft, DeepSpeed, bitsandbytes)" \
      org.opencontainers.image.source="https://github.com/helixrun/helixrun" \
      org.opencontainers.image.licenses="Apache-2.0"
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev libgomp1 libaio1t64 wordnet-base \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /cache/huggingface \
 && chown 1000:1000 /cache/huggingface
COPY --from=builder /opt/python /opt/python
COPY --from=builder /opt/helixrun /opt/helixrun
# The Hugging Face cache is the namespace's model-cache volume; JIT caches go to
# the /tmp emptyDir because the root filesystem is read-only.
ENV PATH=/opt/helixrun/bin:$PATH \
    VIRTUAL_ENV=/opt/helixrun \
    HF_HOME=/cache/huggingface \
    TORCH_EXTENSIONS_DIR=/tmp/torch_extensions \
    TRITON_CACHE_DIR=/tmp/triton \
    MPLCONFIGDIR=/tmp/matplotlib \
    HOME=/tmp \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /tmp
# Numeric non-root user (the base image's `ubuntu`, 1000); pods set fsGroup 1000.
USER 1000:1000
# The base image's nvidia_entrypoint.sh would wrap torchrun: the pod's command runs as is.
ENTRYPOINT []
EXPOSE 9400
