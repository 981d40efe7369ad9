# syntax=docker/dockerfile:1
# The MASB image: `masb worker` by default, `masb ingest ...` (or any masb command) by argument.
#
#   docker build -t masb:0.1.0 .
#   docker run --rm masb:0.1.0 --help
#
# Two stages: the first builds the masb wheel and collects the wheels of its dependencies (every
# dependency ships binary wheels for CPython 3.11 on glibc, so no compiler is needed anywhere);
# the second installs them from those wheels only, offline, and keeps neither pip's cache nor the
# wheels nor the source. Deployment guide: docs/deployment.md.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY streams ./streams
COPY agents ./agents
COPY deploy ./deploy
RUN pip wheel --wheel-dir /wheels . \
 && test "$(find /wheels -name 'masb-*.whl' | wc -l)" = 1

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="masb" \
      org.opencontainers.image.description="Multi-Agency Safeguarding Broker: worker and HTTP ingest" \
      org.opencontainers.image.documentation="docs/deployment.md"

# A fixed numeric uid/gid, so that Kubernetes can check runAsNonRoot and volumes can be owned by it.
RUN groupadd --system --gid 10001 masb \
 && useradd --system --uid 10001 --gid masb --home-dir /home/masb --create-home --shell /usr/sbin/nologin masb \
 && mkdir -p /var/lib/masb/data /var/lib/masb/secrets /etc/masb/keys /etc/masb/policy \
 && chown -R masb:masb /var/lib/masb \
 && chmod 0700 /var/lib/masb/secrets

# Installed from the first stage's wheels without copying them into a layer (BuildKit bind mount).
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels /wheels/masb-*.whl \
 && masb --help > /dev/null

# Where the worker finds what the deployment mounts (all overridable; docs/operations.md, Settings):
# the keys directory holds the router's keys, the case pseudonym key and, in case-keys/, the
# case-key secrets; the data directory is only a cache of Kafka changelogs.
# The web port binds every address of the container: the kubelet's probes and Prometheus reach it
# on the pod's address, and a NetworkPolicy (deploy/kubernetes) limits who may.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/masb \
    MPLCONFIGDIR=/tmp/matplotlib \
    MASB_WEB_HOST=0.0.0.0 \
    MASB_WEB_PORT=6066 \
    MASB_POLICY=/etc/masb/policy/policy.yaml \
    MASB_KEYS_DIR=/etc/masb/keys \
    MASB_DATADIR=/var/lib/masb/data

USER 10001:10001
WORKDIR /var/lib/masb
EXPOSE 6066
# Liveness (docs/operations.md, "Health"): 200 unless the worker is failing for good. The ingest
# serves /health on its own port: its compose service and pod set their own check.
HEALTHCHECK --interval=15s --timeout=5s --start-period=90s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('MASB_WEB_PORT', '6066'), timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["masb"]
CMD ["worker"]
