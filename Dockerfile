# syntax=docker/dockerfile:1
# Event gateway image. Build: docker build -t event-gateway .
# Run:  docker run -p 8080:8080 -e REDIS_URL=redis://... -e DATABASE_URL=postgresql://... event-gateway
# Config: /app/config/gateway.yaml (override with a volume or GATEWAY_CONFIG);
# REDIS_URL / DATABASE_URL and any ${VAR} used in the YAML come from the environment.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY gateway/ ./gateway/
RUN pip wheel --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GATEWAY_CONFIG=/app/config/gateway.yaml
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid gateway --home-dir /app --no-create-home --shell /usr/sbin/nologin gateway
COPY --from=build /wheels /wheels
RUN pip install --no-index /wheels/*.whl && rm -rf /wheels
# Fail the build, not the first request, if the wheel lost a data file
# (setup.cfg [options.package_data]).
RUN python -c "import pathlib, gateway; root = pathlib.Path(gateway.__file__).parent; missing = [f for f in ('static/demo.html', 'static/gateway-events.js', 'broker/publish.lua') if not (root / f).is_file()]; assert not missing, f'not in the wheel: {missing}'"
WORKDIR /app
COPY config/ ./config/
USER 10001:10001
EXPOSE 8080
# slim has no curl: probe liveness with the standard library.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/health/live', timeout=2).status == 200 else 1)"]
# SIGTERM drains streams (event: shutdown) within server.shutdown_timeout;
# give `docker stop -t` more than that.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "gateway"]
