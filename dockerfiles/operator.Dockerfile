# The helixrun operator: the `helixrun` package with its `operator` extra (kopf), no torch.
#
#   docker build -f dockerfiles/operator.Dockerfile -t helixrun/operator:dev .   # Docker Hub base, wheels from PyPI
#   make images                                                                  # no registry needed (tests/images/build.py)
#
# Built from the repository root with BuildKit. Nothing comes from a container
# registry but BASE_IMAGE: Python is Debian's (bookworm: 3.11, as in CI), wheels
# come from PyPI, or from wherever the PIP_* build arguments point pip (`make
# images` serves the wheelhouse `make setup` downloaded). tests/images checks that
# the pins are the project's and that the image installs exactly what the
# operator's code imports.
ARG BASE_IMAGE=debian:12.11-slim

FROM ${BASE_IMAGE} AS python
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
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
LABEL org.opencontainers.image.title="helixrun-operator" \
      org.opencontainers.image.description="helixrun operator: TrainingRun -> Kubeflow PyTorchJob (kopf)" \
      org.opencontainers.image.source="https://github.com/helixrun/helixrun" \
      org.opencontainers.image.licenses="Apache-2.0"
# A passwd entry for the chart's runAsUser: kopf names its peering identity after
# the user (getpass.getuser()), which fails for a uid without one.
RUN groupadd --gid 65532 helixrun \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin helixrun
# Dependencies first, from pyproject.toml alone (the package builds empty), so a
# code change reuses this layer; then the package itself, without dependencies
# (its helixrun/crds is a link to the repository's crds/).
RUN --mount=type=bind,from=pip,source=/opt/pip,target=/opt/pip \
    --mount=type=tmpfs,target=/src \
    --mount=type=bind,source=operator/pyproject.toml,target=/src/operator/pyproject.toml \
    python3 -m venv --without-pip /opt/helixrun \
 && /opt/pip/bin/pip --python /opt/helixrun/bin/python install --no-cache-dir "/src/operator[operator]"
RUN --mount=type=bind,from=pip,source=/opt/pip,target=/opt/pip \
    --mount=type=bind,source=operator,target=/src/operator,rw \
    --mount=type=bind,source=crds,target=/src/crds \
    /opt/pip/bin/pip --python /opt/helixrun/bin/python install --no-cache-dir --no-deps --force-reinstall /src/operator
# The chart mounts the root filesystem read-only with an emptyDir at /tmp:
# bytecode was compiled at install time, and HOME points at the writable /tmp.
ENV PATH=/opt/helixrun/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
WORKDIR /tmp
# Numeric, so the kubelet can check runAsNonRoot; matches the chart's runAsUser.
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["helixrun"]
CMD ["operator"]
