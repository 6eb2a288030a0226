# syntax=docker/dockerfile:1
# The helixrun operator: kopf + the helixrun package, no torch.
#
#   docker build -f dockerfiles/operator.Dockerfile -t ghcr.io/helixrun/operator:0.1.0 .
#
# Built from the repository root. The Python pins are operator/pyproject.toml's,
# installed exactly as CI installs them (Makefile `setup`); tests/images checks it.
ARG PYTHON_VERSION=3.11.18
ARG DEBIAN_RELEASE=trixie

FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/helixrun
ENV PATH=/opt/helixrun/bin:$PATH
# Same pip as CI, so resolution and build behaviour match.
RUN pip install --no-cache-dir pip==25.3
WORKDIR /src
COPY operator/ ./operator/
RUN pip install --no-cache-dir "./operator[operator,cli]" \
 && helixrun --help >/dev/null

FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE}
LABEL org.opencontainers.image.title="helixrun-operator" \
      org.opencontainers.image.description="helixrun operator: TrainingRun -> Kubeflow PyTorchJob (kopf)" \
      org.opencontainers.image.source="https://github.com/helixrun/helixrun" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /opt/helixrun /opt/helixrun
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
