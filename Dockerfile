# syntax=docker/dockerfile:1
# The nodeproxy image: the proxy (and the demo greeter) on python:3.11-slim, non-root.
#
#   docker build -t registry.example.com/nodeproxy/nodeproxy:0.1.0 .   # your registry
#
# Two stages so that no compiler, pip cache or source tree ends up in the image; the
# dependencies are the pinned ones from pyproject.toml, built as wheels in the first stage.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY nodeproxy ./nodeproxy
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[fast]'

FROM python:3.11-slim
# The DaemonSet runs with readOnlyRootFilesystem: never try to write .pyc files.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index /wheels/*.whl
# iproute2: the DaemonSet's init container gives the node the outbound address with `ip`;
# nftables: the same container writes the interception rules (nodeproxy intercept install).
RUN apt-get update \
    && apt-get install -y --no-install-recommends iproute2 nftables \
    && rm -rf /var/lib/apt/lists/*
# Same uid/gid as the DaemonSet's securityContext (runAsUser/runAsGroup/fsGroup 65532).
USER 65532:65532
# 4140 outbound (pods' http_proxy), 4143 inbound node-to-node mTLS, 9901 admin, 9902 probes.
EXPOSE 4140 4143 9901 9902
ENTRYPOINT ["nodeproxy"]
CMD ["run", "--config", "/etc/nodeproxy/config/config.yaml"]
