# syntax=docker/dockerfile:1
# conversion-relay image: a builder with uv installs the locked runtime dependencies and the
# project into /app/.venv; the runtime stage is the same slim Python with only that venv.
#
#   make image     (docker where an engine runs, else buildah: scripts/build-image.sh)
#   docker build -t conversion-relay:0.1.0 .
#   docker run --rm -p 8080:8080 -e KAFKA_BOOTSTRAP=broker:9092 conversion-relay:0.1.0

# Base image pinning: the tag names an exact Python patch release (3.11.14) on a fixed Debian
# (bookworm), but a tag can be re-pushed. To pin the bytes too, append the digest to both
# FROM lines, resolved where a registry is reachable and refreshed by a dependency bot:
#   docker buildx imagetools inspect python:3.11.14-slim-bookworm --format '{{json .Manifest.Digest}}'
#   FROM python:3.11.14-slim-bookworm@sha256:<that digest> AS builder
# It is not appended here because this repository is built and tested without registry access,
# and a digest that was never resolved against the registry would be a made-up value; the chart
# pins the relay image itself by digest (image.digest).
# ---- builder: uv + the locked dependencies, then the project ----------------------------
FROM python:3.11.14-slim-bookworm AS builder

# The same uv as the Makefile (UV_VERSION), from its official image.
COPY --from=ghcr.io/astral-sh/uv:0.13.8 /uv /usr/local/bin/uv

# Byte-compile at install time (the runtime filesystem is read-only); copy, not hard-link,
# out of the cache mount; use the image's own Python, never a downloaded one.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/app/.venv

WORKDIR /app

# An optional extra of the project installed beside the runtime, e.g.
# `--build-arg RELAY_EXTRAS=tracing` for OpenTelemetry traces (tracing.enabled); none by default
# (with the OpenTelemetry SDK present, redis-py loads it in every process: ~0.1 s, ~3 MiB).
ARG RELAY_EXTRAS=""

# Dependencies alone first: this layer is rebuilt only when pyproject.toml or uv.lock change.
# Runtime dependencies only: no extras (no embedded broker, no test tools), no dev groups.
# Bind targets are absolute: BuildKit resolves relative ones against WORKDIR, buildah does not.
# An optional build secret `ca_bundle` (a PEM bundle) is trusted for the downloads, for networks
# whose TLS-intercepting proxy has its own CA: `--secret id=ca_bundle,src=/etc/ssl/certs/...`.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=/app/uv.lock \
    --mount=type=bind,source=pyproject.toml,target=/app/pyproject.toml \
    --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export SSL_CERT_FILE=/run/secrets/ca_bundle; fi \
    && uv sync --frozen --no-dev --no-install-project ${RELAY_EXTRAS:+--extra "$RELAY_EXTRAS"}

# Then the code, installed as a regular (non-editable) package so the venv stands alone.
COPY pyproject.toml uv.lock README.md ./
COPY service ./service
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export SSL_CERT_FILE=/run/secrets/ca_bundle; fi \
    && uv sync --frozen --no-dev --no-editable ${RELAY_EXTRAS:+--extra "$RELAY_EXTRAS"}

# ---- runtime: the same slim Python, the venv and nothing else ----------------------------
FROM python:3.11.14-slim-bookworm AS runtime

# A fixed numeric user (10001) so Kubernetes can verify runAsNonRoot without a passwd lookup.
RUN groupadd --system --gid 10001 relay \
    && useradd --system --no-log-init --uid 10001 --gid relay \
       --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin relay

# Owned by root and read-only to the relay's user.
COPY --from=builder /app/.venv /app/.venv
# A default config so `docker run` works; Kubernetes mounts its own over /etc/conversion-relay.
COPY examples/config.yaml /etc/conversion-relay/config.yaml

ENV PATH="/app/.venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

LABEL org.opencontainers.image.title="conversion-relay" \
      org.opencontainers.image.description="Relays conversion events from Kafka to marketing vendors' goal APIs." \
      org.opencontainers.image.licenses="Apache-2.0"

USER 10001:10001
WORKDIR /app
EXPOSE 8080

# The relay drains in-flight deliveries and commits offsets on SIGTERM (pipeline.shutdown_grace_s).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/livez', timeout=4)"]

ENTRYPOINT ["conversion-relay"]
CMD ["run", "--config", "/etc/conversion-relay/config.yaml"]
