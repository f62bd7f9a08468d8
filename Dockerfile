# syntax=docker/dockerfile:1
# Event gateway image. Build: docker build -t event-gateway .
# Run:  docker run -p 8080:8080 -e REDIS_URL=redis://... -e DATABASE_URL=postgresql://... event-gateway
# Config: /app/config/gateway.yaml (override with a volume or GATEWAY_CONFIG);
# REDIS_URL / DATABASE_URL and any ${VAR} used in the YAML come from the environment.
# Runs as uid 10001 and writes nothing outside /tmp (and only with
# server.workers > 1), so a read-only root filesystem works (docs/deploy.md).
# `make image` builds this file with podman (tools/image.py); PYTHON_IMAGE is
# the base, any Debian-based image with Python 3.11 and pip first on PATH.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Dependencies first, from setup.cfg alone: this layer is rebuilt only when
# the dependencies change, not on every edit of the code or the README.
COPY pyproject.toml setup.cfg ./
COPY gateway/__init__.py ./gateway/
RUN touch README.md && pip wheel --wheel-dir /wheels . && rm /wheels/event_gateway-*.whl
COPY README.md ./
COPY gateway/ ./gateway/
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && cd /wheels && sha256sum -- *.whl > /wheels.sha256

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GATEWAY_CONFIG=/app/config/gateway.yaml
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid gateway --home-dir /app --no-create-home --shell /usr/sbin/nologin gateway
# The wheels are mounted, not copied: no layer keeps them. Their checksums
# are copied (a few hundred bytes): podman/buildah reuse a cached RUN whatever
# a --mount from another stage holds, so without this file a changed wheel
# would not be installed; a changed checksum invalidates the install layer.
COPY --from=build /wheels.sha256 /tmp/wheels.sha256
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    cd /wheels && sha256sum --check --quiet /tmp/wheels.sha256 \
 && pip install --no-index /wheels/*.whl && rm /tmp/wheels.sha256
# Fail the build, not the first request, if the wheel lost a data file
# (setup.cfg [options.package_data]).
RUN python -c "import pathlib, gateway; root = pathlib.Path(gateway.__file__).parent; missing = [f for f in ('static/demo.html', 'static/gateway-events.js', 'durable/publish.lua') if not (root / f).is_file()]; assert not missing, f'not in the wheel: {missing}'"
WORKDIR /app
COPY config/ ./config/
USER 10001:10001
EXPOSE 8080
# slim has no curl: probe liveness with the standard library, on the host and
# port of the config the gateway reads (GATEWAY_CONFIG, ${VAR} expanded), so a
# mounted config with another server.port stays healthy (tools/healthcheck.py).
COPY tools/healthcheck.py /app/healthcheck.py
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "/app/healthcheck.py"]
# SIGTERM drains streams (event: shutdown) within server.shutdown_timeout;
# give `docker stop -t` more than that.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "gateway"]
