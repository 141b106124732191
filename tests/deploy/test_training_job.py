"""k8s/training/job.yaml: a valid Job whose torchrun arguments match its pod count."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.tools import require_module

yaml = require_module("yaml")

JOB = Path(__file__).resolve().parents[2] / "k8s/training/job.yaml"


def _objects() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(JOB.read_text()) if doc}


def test_job_passes_strict_schema_validation(tool):
    result = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "--kubernetes-version", "1.37.0", str(JOB)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" passed for resource ") == 2


def test_torchrun_nodes_match_the_pods_and_rank_zero_is_reachable():
    objects = _objects()
    job, service = objects["Job"], objects["Service"]
    spec = job["spec"]
    (container,) = spec["template"]["spec"]["containers"]
    args = dict(a.split("=", 1) for a in container["args"] if a.startswith("--n"))
    assert int(args["--nnodes"]) == spec["completions"] == spec["parallelism"]
    assert spec["completionMode"] == "Indexed"
    master = next(a for a in container["args"] if a.startswith("--master-addr="))
    name = job["metadata"]["name"]
    assert master == f"--master-addr={name}-0.{service['metadata']['name']}"
    assert spec["template"]["spec"]["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"


def test_the_locked_down_pod_can_write_what_training_writes():
    """A read-only root: numba's kernel cache goes to the /tmp volume; the data claim is
    writable by the pod's group (--out), as for the server."""
    pod = _objects()["Job"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert env["NUMBA_CACHE_DIR"].startswith("/tmp/") and "/tmp" in mounts
    context = pod["securityContext"]
    assert context["fsGroup"] == context["runAsGroup"] == context["runAsUser"]
