"""`python -m service` as a real process: configuration errors, and a SIGTERM that arrives
while calls are running lets them finish."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.tools.client import RecommenderClient
from training.config import Config
from training.data.logs import ItemVocab
from training.export import export_model
from training.fit.train import save_model
from training.models.architectures import build_model

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


class ServiceProcess:
    """python -m service in a subprocess; collects its log lines as they come."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", *args], cwd=ROOT, env=ENV,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout_s: float = 60) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if found := re.search(pattern, line):
                    return found
            if self.proc.poll() is not None and not self.reader.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"no log line matching {pattern!r}; log:\n{''.join(self.lines)}")

    def wait_serving(self) -> int:
        """The gRPC port, once the whole process serves: with several workers the
        supervisor's line, not the first worker's (another may still answer UNAVAILABLE)."""
        found = self.wait_for(r"gRPC on 127\.0\.0\.1:(\d+)(?:.*, (\d+) workers)?")
        workers = int(found[2] or 1)
        self.wait_for("serving model" if workers == 1 else f"all {workers} workers have loaded")
        return int(found[1])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def test_a_missing_model_directory_exits_with_a_message_naming_it(tmp_path):
    missing = tmp_path / "nowhere"
    proc = subprocess.run(
        [sys.executable, "-m", "service", "--model", str(missing), "--host", "127.0.0.1",
         "--port", "0", "--metrics-port", "0"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    assert f"model directory {missing} does not exist" in proc.stderr


def test_a_bad_environment_variable_is_named_in_the_error():
    proc = subprocess.run(
        [sys.executable, "-m", "service", "--model", "x"], cwd=ROOT, timeout=60,
        env={**ENV, "RECSYS_PORT": "fifty"}, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "RECSYS_PORT='fifty'" in proc.stderr


@pytest.fixture(scope="module")
def heavy_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30,000 items and 200 hidden units: a 200-click call takes a noticeable while, so
    calls are reliably still running when the signal arrives."""
    root = tmp_path_factory.mktemp("heavy")
    torch.manual_seed(0)
    cfg = Config(layers=(200,))
    n_items = 30_000
    vocab = ItemVocab([f"h{i}" for i in range(n_items)])
    popularity = torch.ones(n_items, dtype=torch.int64).numpy()
    save_model(root / "model", build_model(n_items, cfg).eval(), cfg, vocab, popularity, {})
    return export_model(root / "model", root / "export")


def health(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status


@pytest.mark.slow
def test_sigterm_under_load_drains_then_finishes_every_call_in_flight(heavy_export):
    """Health turns NOT_SERVING at once, calls are still taken for --drain-s, then new calls
    are refused with UNAVAILABLE (retryable elsewhere) and none in flight is CANCELLED."""
    service = ServiceProcess(
        "--model", str(heavy_export), "--host", "127.0.0.1", "--port", "0",
        "--metrics-port", "0", "--grace-s", "60", "--drain-s", "1.5", "--cache-size", "0",
    )  # fmt: skip
    try:
        port = service.wait_serving()
        signalled = threading.Event()
        outcomes: list[tuple[bool, str]] = []  # (sent after the signal, status code name)

        def caller(n: int) -> None:
            with RecommenderClient(f"127.0.0.1:{port}", timeout_s=60) as client:
                for i in range(10_000):  # bounded; ends at the first refusal
                    clicks = [f"h{(n * 7919 + i * 31 + j) % 30_000}" for j in range(200)]
                    after = signalled.is_set()
                    try:
                        client.recommend("", clicks, 10)
                        outcomes.append((after, "OK"))
                    except grpc.RpcError as err:
                        outcomes.append((after, err.code().name))
                        return

        with ThreadPoolExecutor(16) as pool:
            calls = [pool.submit(caller, n) for n in range(16)]
            time.sleep(1.0)
            service.proc.send_signal(signal.SIGTERM)
            signalled.set()
            service.wait_for("still taking calls")
            assert health(port) == health_pb2.HealthCheckResponse.NOT_SERVING
            for call in calls:
                call.result(timeout=120)
        codes = [code for _, code in outcomes]
        assert "CANCELLED" not in codes and set(codes) <= {"OK", "UNAVAILABLE"}
        assert sum(1 for after, code in outcomes if after and code == "OK") >= 16  # drained
        assert service.proc.wait(timeout=120) == 0
        service.wait_for("stopped")
    finally:
        service.close()


def test_a_second_server_on_the_same_port_fails_to_start(heavy_export):
    first = ServiceProcess(
        "--model", str(heavy_export), "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0"
    )
    try:
        port = first.wait_for(r"gRPC on 127\.0\.0\.1:(\d+)")[1]
        second = subprocess.run(
            [sys.executable, "-m", "service", "--model", str(heavy_export), "--host",
             "127.0.0.1", "--port", port, "--metrics-port", "0"],
            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert second.returncode == 2
        assert f"cannot listen on 127.0.0.1:{port}" in second.stderr
    finally:
        first.close()
