"""The CPU serving image, for real: trained on the host, built offline with podman, started,
SERVING over grpc.health.v1, a Recommend call from the host that matches the same model
served in-process, then SIGTERM and a clean exit.

Slow (a few minutes from a clean machine: debootstrap, wheels, build); marked `container`.
    pytest -m container tests/deploy/test_container.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from service.config import load_config
from service.proto import recommender_pb2 as pb
from service.proto import recommender_pb2_grpc as pb_grpc
from service.server import SERVICE_NAME, RecommendationServer
from service.tools import healthcheck
from tests.tools import missing

pytestmark = [pytest.mark.container, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
ULIMITS = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768"]
STARTUP_S = 120  # generous: the first start on a busy 2-core CI machine
STOP_TIMEOUT_S = 30  # podman's SIGKILL comes this long after SIGTERM
TOP_K = 5


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, **kwargs)


def _check(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"{result.args}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def podman(tool) -> str:
    return tool("podman")


@pytest.fixture(scope="module")
def export_dir(podman, tmp_path_factory) -> Path:
    """generate -> train -> export with the real training CLI, on the host (after the podman
    check, so a machine without podman skips at once instead of training first)."""
    work = tmp_path_factory.mktemp("pipeline")
    python = [sys.executable, "-m", "training"]
    steps = [
        ["generate", "--out", str(work / "data"), "--items", "300", "--sessions", "3000"],
        ["train", "--train", str(work / "data/train.tsv"), "--out", str(work / "run"),
         "--param", "n_epochs=1", "--param", "layers=32"],
        ["export", "--model", str(work / "run"), "--out", str(work / "export")],
    ]  # fmt: skip
    for step in steps:
        _check(_run(python + step))
    return work / "export"


@pytest.fixture(scope="module")
def image(podman, export_dir, tool) -> Iterator[str]:
    """The CPU image with the model baked in, built the way CI builds it (offline)."""
    tag = f"localhost/sessionrec:cpu-test-{uuid.uuid4().hex[:8]}"
    base = os.environ.get("BASE_IMAGE", "localhost/sessionrec-base:bookworm")
    has_base = _run([podman, "image", "exists", base]).returncode == 0
    if not has_base and os.geteuid() != 0:
        missing(f"no base image {base}, and making one needs root (sudo scripts/container-base.sh)")
    if not has_base:
        tool("debootstrap")  # scripts/container-build.sh makes the base image with it
    _check(_run(["scripts/container-build.sh", "--model", str(export_dir), "--tag", tag]))
    yield tag
    _run([podman, "rmi", "--force", tag])


@pytest.fixture(scope="module")
def container(podman, image) -> Iterator[tuple[str, int]]:
    """(name, host port of the gRPC server), locked down like the Kubernetes pod."""
    name = f"sessionrec-test-{uuid.uuid4().hex[:8]}"
    cmd = [podman, "run", "--detach", "--name", name, *ULIMITS,
           "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
           "--security-opt", "no-new-privileges",
           "--publish", "127.0.0.1::50051", image]  # fmt: skip
    _check(_run(cmd))
    try:
        port = int(_check(_run([podman, "port", name, "50051/tcp"])).strip().rsplit(":", 1)[1])
        yield name, port
    finally:
        _run([podman, "rm", "--force", "--time", "0", name])


def _wait_serving(podman: str, name: str, port: int) -> None:
    deadline = time.monotonic() + STARTUP_S
    reason = ""
    while time.monotonic() < deadline:
        serving, reason = healthcheck.check("127.0.0.1", port, SERVICE_NAME, timeout_s=2.0)
        if serving:
            return
        state = _run([podman, "inspect", "--format", "{{.State.Status}}", name]).stdout.strip()
        if state != "running":
            break
        time.sleep(0.5)
    logs = _run([podman, "logs", name])
    pytest.fail(f"container never SERVING ({reason}):\n{logs.stdout}{logs.stderr}")


def _recommend(target: str, clicks: list[str]) -> pb.RecommendResponse:
    with grpc.insecure_channel(target) as channel:
        request = pb.RecommendRequest(session_id="container-test", clicks=clicks, top_k=TOP_K)
        return pb_grpc.RecommenderStub(channel).Recommend(request, timeout=10)


def _in_process(export_dir: Path, clicks: list[str]) -> pb.RecommendResponse:
    """The same call answered by the same export served on the host, for comparison."""
    argv = ["--model", str(export_dir), "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0",
            "--device", "cpu"]  # fmt: skip
    server = RecommendationServer(load_config(argv, environ={}))
    server.start()
    try:
        server.load_model()
        return _recommend(f"127.0.0.1:{server.port}", clicks)
    finally:
        server.stop(0, 0)


def test_cpu_image_serves_a_real_model_and_stops_cleanly(podman, container, export_dir):
    name, port = container
    _wait_serving(podman, name, port)

    # The image's own HEALTHCHECK command, run inside the container.
    assert _run([podman, "healthcheck", "run", name]).returncode == 0
    user = _check(_run([podman, "exec", name, "python", "-c", "import os; print(os.getuid())"]))
    assert user.strip() == "10001"
    torch = "import importlib.util as u; print(u.find_spec('torch') is None)"
    assert _check(_run([podman, "exec", name, "python", "-c", torch])).strip() == "True"

    items = (export_dir / "items.txt").read_text().split()
    clicks = items[:3]
    answer = _recommend(f"127.0.0.1:{port}", clicks)
    meta = json.loads((export_dir / "metadata.json").read_text())
    assert answer.model_version == meta["model_version"]
    # the image's default: the model blended with the online statistics
    assert answer.source == pb.SOURCE_BLEND and not answer.unknown_clicks
    got = [(i.item_id, i.score) for i in answer.items]
    assert len(got) == TOP_K
    assert {item for item, _ in got} <= set(items)
    expected = [(i.item_id, i.score) for i in _in_process(export_dir, clicks).items]
    assert [item for item, _ in got] == [item for item, _ in expected]
    assert [score for _, score in got] == pytest.approx([s for _, s in expected], rel=1e-5)

    started = time.monotonic()
    _check(_run([podman, "stop", "--time", str(STOP_TIMEOUT_S), name]))
    stopped_after = time.monotonic() - started
    exit_code = _check(_run([podman, "inspect", "--format", "{{.State.ExitCode}}", name]))
    # 0 means the server handled SIGTERM and exited by itself: podman's SIGKILL gives 137.
    assert exit_code.strip() == "0"
    # Nothing was in flight, so the drain ends at once; "a few seconds" is the bound.
    assert stopped_after < 10, f"took {stopped_after:.1f} s to stop"
