"""k8s/: every overlay renders with kubectl kustomize, validates strictly, and keeps the
properties the service depends on (gRPC probes, drain time, capacity during rollouts)."""

from __future__ import annotations

import os
import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

from service.config import ServiceConfig
from service.server import SERVICE_NAME
from tests.tools import require_module

# PyYAML: a dev extra (kubernetes-validate brings it too)
yaml = require_module("yaml")

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = sorted(p.parent.name for p in (ROOT / "k8s/overlays").glob("*/kustomization.yaml"))
# Newest schema kubernetes-validate 1.37 ships; K8S_VERSION=1.34.0 checks an older cluster.
K8S_VERSION = os.environ.get("K8S_VERSION", "1.37.0")


@cache
def _render(kubectl: str, overlay: str) -> str:
    return subprocess.run(
        [kubectl, "kustomize", str(ROOT / "k8s/overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


@pytest.fixture(params=OVERLAYS)
def rendered(request, tool) -> tuple[str, str]:
    """(overlay name, rendered YAML)."""
    return request.param, _render(tool("kubectl"), request.param)


def _objects(text: str) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(text) if doc}


def _server(objects: dict[str, dict]) -> dict:
    (container,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def _env(objects: dict[str, dict]) -> dict[str, str]:
    return objects["ConfigMap"]["data"]


def test_overlays_include_cpu_and_gpu():
    assert {"cpu", "gpu"} <= set(OVERLAYS)


def test_overlay_passes_strict_schema_validation(rendered, tool, tmp_path):
    name, text = rendered
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    result = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "--kubernetes-version", K8S_VERSION, str(path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    n_objects = sum(1 for doc in yaml.safe_load_all(text) if doc)
    assert len(re.findall(r" passed for resource ", result.stdout)) == n_objects


def test_probes_use_grpc_on_the_numeric_server_port(rendered):
    objects = _objects(rendered[1])
    server = _server(objects)
    port = int(_env(objects)["RECSYS_PORT"])
    assert {"name": "grpc", "containerPort": port, "protocol": "TCP"} in server["ports"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["grpc"]["port"] == port, probe  # grpc probes take no port name
    assert server["readinessProbe"]["grpc"]["service"] == SERVICE_NAME


def test_startup_budget_covers_a_slow_model_load(rendered):
    probe = _server(_objects(rendered[1]))["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 120


def test_grace_period_outlasts_prestop_and_drain(rendered):
    objects = _objects(rendered[1])
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    env = _env(objects)
    drain = float(env.get("RECSYS_DRAIN_S", ServiceConfig.drain_s))
    grace = float(env.get("RECSYS_GRACE_S", ServiceConfig.grace_s))
    pre_stop = _server(objects)["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain + grace


def test_rollout_never_drops_below_serving_capacity(rendered):
    objects = _objects(rendered[1])
    strategy = objects["Deployment"]["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    assert strategy["rollingUpdate"]["maxSurge"] not in (0, "0%")
    hpa, pdb = objects["HorizontalPodAutoscaler"], objects["PodDisruptionBudget"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == objects["Deployment"]["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["maxUnavailable"]
    # the HPA alone sets the count: a replicas field would reset it on every apply
    assert "replicas" not in objects["Deployment"]["spec"]


def test_pod_is_locked_down(rendered):
    objects = _objects(rendered[1])
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"]
    context = _server(objects)["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"] for m in _server(objects)["volumeMounts"]}
    assert "/tmp" in mounts  # writable scratch despite the read-only root


def test_requests_and_limits_are_set(rendered):
    resources = _server(_objects(rendered[1]))["resources"]
    for kind in ("cpu", "memory"):
        assert kind in resources["requests"] and kind in resources["limits"]


def test_services_select_the_pods_by_named_grpc_port(rendered):
    docs = [d for d in yaml.safe_load_all(rendered[1]) if d]
    pod_labels = _objects(rendered[1])["Deployment"]["spec"]["template"]["metadata"]["labels"]
    services = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "Service"}
    assert services["sessionrec-headless"]["clusterIP"] == "None"
    assert "clusterIP" not in services["sessionrec"]
    for spec in services.values():
        assert spec["selector"] and spec["selector"].items() <= pod_labels.items()
        grpc_port = next(p for p in spec["ports"] if p["name"] == "grpc")
        assert grpc_port["targetPort"] == "grpc"


def test_prometheus_scrapes_the_metrics_port(rendered):
    objects = _objects(rendered[1])
    notes = objects["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true"
    assert notes["prometheus.io/port"] == _env(objects)["RECSYS_METRICS_PORT"]


def test_gpu_overlay_asks_for_a_gpu_and_tolerates_the_taint(tool):
    objects = _objects(_render(tool("kubectl"), "gpu"))
    server, pod = _server(objects), objects["Deployment"]["spec"]["template"]["spec"]
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert server["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert server["image"].endswith(":gpu") and _env(objects)["RECSYS_DEVICE"] == "cuda"


def test_cpu_overlays_use_the_cpu_image_and_no_gpu(tool):
    for overlay in (o for o in OVERLAYS if o.startswith("cpu")):
        objects = _objects(_render(tool("kubectl"), overlay))
        server = _server(objects)
        assert server["image"].endswith(":cpu") and _env(objects)["RECSYS_DEVICE"] == "cpu"
        assert "nvidia.com/gpu" not in server["resources"]["limits"]


def test_model_volume_overlay_points_the_server_at_the_volume(tool):
    objects = _objects(_render(tool("kubectl"), "cpu-model-volume"))
    mounts = {m["name"]: m for m in _server(objects)["volumeMounts"]}
    assert mounts["models"]["readOnly"] is True
    assert _env(objects)["RECSYS_MODEL_DIR"].startswith(mounts["models"]["mountPath"] + "/")
    volumes = {v["name"]: v for v in objects["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    claim = volumes["models"]["persistentVolumeClaim"]["claimName"]
    assert claim == objects["PersistentVolumeClaim"]["metadata"]["name"]
