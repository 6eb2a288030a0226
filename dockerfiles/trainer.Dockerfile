# The helixrun trainer: `helixrun-train` (the trainer package's console scripts) and
# what helixrun_trainer imports: torch with the CUDA libraries its PyPI wheels
# depend on, transformers, peft, bitsandbytes for QLoRA (the `qlora` extra).
# Trainer pods run the PyTorchJob's command, so the image has no ENTRYPOINT.
#
#   docker build -f dockerfiles/trainer.Dockerfile -t helixrun/trainer:dev .   # Docker Hub base, wheels from PyPI
#   make images                                                                # no registry needed (tests/images/build.py)
#
# Built from the repository root with BuildKit. Nothing comes from a container
# registry but BASE_IMAGE: Python is Debian's (bookworm: 3.11, as in CI), wheels
# come from PyPI, or from wherever the PIP_* build arguments point pip (`make
# images` serves the wheelhouse `make setup` downloaded, so the 3 GB of torch and
# CUDA wheels are downloaded once). tests/images checks that the pins are the
# project's and that the image installs exactly what the trainer's code imports.
ARG BASE_IMAGE=debian:12.11-slim

# procps: tests SIGKILL the training process with pgrep/pkill; wordnet-base: the
# WordNet GeneChat's METEOR reads (helixrun_trainer/evaluation/text.py).
FROM ${BASE_IMAGE} AS python
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 procps ca-certificates wordnet-base \
 && rm -rf /var/lib/apt/lists/*

# pip lives outside the image's venv: the final stage runs it from a bind mount.
FROM python AS pip
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
ARG PIP_TRUSTED_HOST
RUN --mount=type=bind,source=dockerfiles/requirements-build.txt,target=/src/requirements-build.txt \
    apt-get update \
 && apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/pip \
 && /opt/pip/bin/pip install --no-cache-dir -r /src/requirements-build.txt

FROM python
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
ARG PIP_TRUSTED_HOST
LABEL org.opencontainers.image.title="helixrun-trainer" \
      org.opencontainers.image.description="helixrun trainer runtime (torch with CUDA from PyPI, transformers, peft, bitsandbytes)" \
      org.opencontainers.image.source="https://github.com/helixrun/helixrun" \
      org.opencontainers.image.licenses="Apache-2.0"
# A name for uid 1000 (the operator's TRAINER_UID): torch asks getpass.getuser().
RUN groupadd --gid 1000 trainer \
 && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin trainer \
 && mkdir -p /cache/huggingface \
 && chown 1000:1000 /cache/huggingface
# Dependencies first, from the pyproject.toml files alone (the packages build
# empty), so a code change reuses this 6 GB layer; then the two packages, without
# dependencies (helixrun/crds is a link to the repository's crds/).
RUN --mount=type=bind,from=pip,source=/opt/pip,target=/opt/pip \
    --mount=type=tmpfs,target=/src \
    --mount=type=bind,source=operator/pyproject.toml,target=/src/operator/pyproject.toml \
    --mount=type=bind,source=trainer/pyproject.toml,target=/src/trainer/pyproject.toml \
    python3 -m venv --without-pip /opt/helixrun \
 && /opt/pip/bin/pip --python /opt/helixrun/bin/python install --no-cache-dir /src/operator "/src/trainer[qlora]"
RUN --mount=type=bind,from=pip,source=/opt/pip,target=/opt/pip \
    --mount=type=bind,source=operator,target=/src/operator,rw \
    --mount=type=bind,source=trainer,target=/src/trainer,rw \
    --mount=type=bind,source=crds,target=/src/crds \
    /opt/pip/bin/pip --python /opt/helixrun/bin/python install --no-cache-dir --no-deps --force-reinstall \
      /src/operator /src/trainer
# The root filesystem is read-only in pods: HOME and every cache live in the /tmp
# emptyDir; the Hugging Face cache is the namespace's model-cache volume.
ENV PATH=/opt/helixrun/bin:$PATH \
    VIRTUAL_ENV=/opt/helixrun \
    HF_HOME=/cache/huggingface \
    TORCH_EXTENSIONS_DIR=/tmp/torch_extensions \
    TRITON_CACHE_DIR=/tmp/triton \
    XDG_CACHE_HOME=/tmp/.cache \
    HOME=/tmp \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /tmp
# Numeric, so the kubelet can check runAsNonRoot; pods set fsGroup 1000.
USER 1000:1000
# Should BASE_IMAGE have an entrypoint, the pod's command must still run as is.
ENTRYPOINT []
EXPOSE 9400
