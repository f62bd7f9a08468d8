"""deploy/kubernetes/: valid against a pinned Kubernetes version, and consistent.

No cluster runs here: every manifest (and the ConfigMap the kustomization
generates from gateway.yaml) is validated offline with kubernetes-validate
(strict: unknown fields fail) against KUBERNETES_VERSION, and the numbers that
must agree are checked against each other and against the gateway's own
config loader: the grace period covers the preStop wait plus the drain, the
probes hit the right endpoints on the configured port, the pod runs as the
image's user on a read-only root, memory fits the capacity model.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.config import load_config

REPO_ROOT = Path(__file__).resolve().parent.parent
K8S = REPO_ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.31.0"  # the oldest release still supported upstream when written
UNIT_COSTS = REPO_ROOT / "docs" / "bench" / "unit-costs.json"
NAME_LABEL = "app.kubernetes.io/name"

_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 10**3, "M": 10**6, "G": 10**9, "": 1}


def _bytes(quantity: str) -> int:
    m = re.fullmatch(r"(\d+)([KMG]i?|k)?", quantity)
    assert m, quantity
    return int(m.group(1)) * _UNITS[m.group(2) or ""]


def kustomization() -> dict[str, Any]:
    return dict(yaml.safe_load((K8S / "kustomization.yaml").read_text()))


def resources() -> list[dict[str, Any]]:
    """Every object `kubectl apply -k` would create (the ConfigMap rendered as kustomize does)."""
    kust = kustomization()
    docs: list[dict[str, Any]] = []
    for name in kust["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    for gen in kust.get("configMapGenerator", []):
        data = {Path(f).name: (K8S / f).read_text() for f in gen["files"]}
        docs.append({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": gen["name"]}, "data": data})
    return docs


def by_kind(kind: str) -> dict[str, Any]:
    (doc,) = [d for d in resources() if d["kind"] == kind]
    return doc


def gateway_config() -> Any:
    env = {"REDIS_URL": "redis://redis:6379/0", "DATABASE_URL": "postgresql://g@pg/g"}
    return load_config(str(K8S / "gateway.yaml"), env)


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    return dict(deployment["spec"]["template"]["spec"])


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (c,) = pod_spec(deployment)["containers"]
    return dict(c)


def prestop_seconds(deployment: dict[str, Any]) -> float:
    hook = container(deployment).get("lifecycle", {}).get("preStop", {})
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    cmd = hook.get("exec", {}).get("command", [])
    assert cmd[:1] == ["sleep"] and len(cmd) == 2, f"preStop is not a plain sleep: {hook}"
    return float(cmd[1])


def grace_problems(deployment: dict[str, Any], shutdown_timeout: float) -> list[str]:
    """Why SIGKILL could cut a drain short (empty when the numbers agree)."""
    grace = pod_spec(deployment).get("terminationGracePeriodSeconds", 30)
    wait = prestop_seconds(deployment)
    needed = wait + shutdown_timeout
    if grace <= needed:
        return [f"terminationGracePeriodSeconds {grace} <= preStop {wait:g} s + "
                f"server.shutdown_timeout {shutdown_timeout:g} s: pods are killed mid-drain"]
    return []


# ----------------------------------------------------------------------------


@pytest.mark.parametrize("doc", resources(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_validates_against_the_pinned_kubernetes(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_example_secret_validates_and_names_what_the_deployment_reads() -> None:
    (secret,) = yaml.safe_load_all((K8S / "secret.example.yaml").read_text())
    kubernetes_validate.validate(secret, KUBERNETES_VERSION, strict=True)
    refs = {e["valueFrom"]["secretKeyRef"]["key"]
            for e in container(by_kind("Deployment"))["env"]
            if "secretKeyRef" in e.get("valueFrom", {})}
    required = {e["valueFrom"]["secretKeyRef"]["key"]
                for e in container(by_kind("Deployment"))["env"]
                if "secretKeyRef" in e.get("valueFrom", {})
                and not e["valueFrom"]["secretKeyRef"].get("optional")}
    assert required == {"redis-url", "database-url"}
    assert required <= set(secret["stringData"]) <= refs


def test_gateway_yaml_loads_with_the_gateways_own_validation() -> None:
    cfg = gateway_config()
    assert cfg.server.port == 8080 and cfg.server.workers == 1


def test_grace_period_covers_prestop_and_drain() -> None:
    deployment = by_kind("Deployment")
    assert grace_problems(deployment, gateway_config().server.shutdown_timeout) == []


def test_a_grace_period_shorter_than_the_drain_is_caught() -> None:
    """The check above is not vacuous: 15 s < 10 s preStop + 10 s drain fails it."""
    short = copy.deepcopy(by_kind("Deployment"))
    short["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 15
    assert grace_problems(short, gateway_config().server.shutdown_timeout)
    no_default = copy.deepcopy(by_kind("Deployment"))
    del no_default["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]  # 30 s
    assert grace_problems(no_default, 25)


def test_probes_hit_the_right_endpoints_on_the_configured_port() -> None:
    c = container(by_kind("Deployment"))
    (port,) = c["ports"]
    assert port["containerPort"] == gateway_config().server.port
    named = port["name"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": named}
    assert c["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": named}
    assert c["startupProbe"]["httpGet"]["path"] == "/health/live"
    # a drain must drop the pod from endpoints before liveness could restart it
    live = c["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 20
    ready = c["readinessProbe"]
    assert ready["periodSeconds"] * ready["failureThreshold"] <= 15


def test_rolling_update_never_drops_below_the_desired_count() -> None:
    d = by_kind("Deployment")
    # the HPA owns the count: a `replicas` here is reset on every apply
    assert "replicas" not in d["spec"]
    assert d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pdb = by_kind("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    hpa = by_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["minReplicas"] >= 3
    assert hpa["spec"]["scaleTargetRef"]["name"] == d["metadata"]["name"]


def test_the_image_is_pinned_not_latest() -> None:
    """Pods pull IfNotPresent: a re-pushed `latest` would never roll out."""
    (image,) = kustomization()["images"]
    assert image.get("digest") or image["newTag"] not in ("", "latest"), image


def test_selectors_match_the_pods() -> None:
    d = by_kind("Deployment")
    labels = d["spec"]["template"]["metadata"]["labels"]
    assert d["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert by_kind("Service")["spec"]["selector"].items() <= labels.items()
    assert by_kind("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() \
        <= labels.items()


def test_pod_is_locked_down() -> None:
    d = by_kind("Deployment")
    pod = pod_spec(d)
    sc = pod["securityContext"]
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    user = re.search(r"^USER (\d+):(\d+)", dockerfile, re.M)
    assert user, "Dockerfile has no numeric USER"
    assert (sc["runAsNonRoot"], sc["runAsUser"], sc["runAsGroup"]) == (
        True, int(user.group(1)), int(user.group(2)))
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    csc = container(d)["securityContext"]
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False
    # the only writable mount is /tmp (multiprocess metrics with server.workers > 1)
    mounts = {m["mountPath"]: m for m in container(d)["volumeMounts"]}
    assert {p for p, m in mounts.items() if not m.get("readOnly")} == {"/tmp"}


def test_config_is_mounted_where_the_container_reads_it() -> None:
    d = by_kind("Deployment")
    env = {e["name"]: e for e in container(d)["env"]}
    mounts = {m["name"]: m["mountPath"] for m in container(d)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(d)["volumes"]}
    cm_volume = next(n for n, v in volumes.items() if "configMap" in v)
    generated = kustomization()["configMapGenerator"][0]
    assert volumes[cm_volume]["configMap"]["name"] == generated["name"]
    assert env["GATEWAY_CONFIG"]["value"] == f"{mounts[cm_volume]}/gateway.yaml"
    # every ${VAR} gateway.yaml reads is set from the Secret
    used = set(re.findall(r"\$\{(\w+)", (K8S / "gateway.yaml").read_text()))
    assert used <= set(env), used - set(env)


def test_memory_limit_fits_the_capacity_model() -> None:
    costs = json.loads(UNIT_COSTS.read_text())["costs"]
    per_process = costs["mem_per_process"]["value"] * 2**20
    per_stream = costs["mem_per_stream"]["value"] * 2**10
    idle_full = per_process + gateway_config().sse.max_connections * per_stream
    res = container(by_kind("Deployment"))["resources"]
    assert _bytes(res["requests"]["memory"]) >= idle_full
    assert _bytes(res["limits"]["memory"]) >= 2 * idle_full  # room for lagging clients' queues
    assert "cpu" in res["requests"] and "cpu" not in res.get("limits", {})


def test_ingress_is_set_up_for_sse_and_keeps_publish_internal() -> None:
    ing = by_kind("Ingress")
    ann = ing["metadata"]["annotations"]
    assert ann["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    heartbeat = gateway_config().sse.heartbeat
    assert int(ann["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > 4 * heartbeat
    assert ann["nginx.ingress.kubernetes.io/upstream-hash-by"] == "$arg_shop"
    paths = [p for rule in ing["spec"]["rules"] for p in rule["http"]["paths"]]
    routed = {(p["path"], p["pathType"]) for p in paths}
    base = gateway_config().server.path
    assert routed == {(base, "Exact"), (f"{base}/ticket", "Exact")}
