"""The harness around the gateway: what starts it and what it runs against, locally.

- `run_local.py`  ``make run`` (with `run_config.py`, `local_port.py`, `run_banner.py`);
- `services/`     throwaway Redis, PostgreSQL, nginx, Prometheus: one module per service,
                  one readiness wait (the tests, ``make run`` and the bench share them);
- `cluster.py`    a local Redis Cluster (`cluster_nodes.py`: its nodes' view, a key's slot);
- `gateway.py`    a gateway process (`GatewayServer`);
- `edge.py`       the shipped TLS + HTTP/2 nginx edge, run locally;
- `image.py`, `podman.py`  ``make image``: the container image, podman on private state;
- `healthcheck.py` the image's HEALTHCHECK; `bootstrap.sh` the Debian packages;
- `chaos/`        ``make chaos``: the seeded fault-injection checker.

Nothing here is imported by `gateway/`.
"""
