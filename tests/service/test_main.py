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
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import torch

from service.client import RecommenderClient
from training.config import Config
from training.data import ItemVocab
from training.export import export_model
from training.model import build_model
from training.train import save_model

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


def in_progress(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read()
    found = re.findall(rb'recsys_requests_in_progress\{method="Recommend"\} (\S+)', text)
    return float(found[0]) if found else 0.0


@pytest.mark.slow
def test_sigterm_during_calls_lets_them_finish_and_refuses_new_ones(heavy_export):
    service = ServiceProcess(
        "--model", str(heavy_export), "--host", "127.0.0.1", "--port", "0",
        "--metrics-port", "0", "--grace-s", "60", "--workers", "4", "--cache-size", "0",
    )  # fmt: skip
    try:
        found = service.wait_for(r"gRPC on 127\.0\.0\.1:(\d+), metrics on port (\d+)")
        port, metrics_port = int(found[1]), int(found[2])
        service.wait_for("serving model")
        clicks = [f"h{(i * 7919) % 30_000}" for i in range(200)]
        with (
            RecommenderClient(f"127.0.0.1:{port}", timeout_s=120) as client,
            ThreadPoolExecutor(6) as pool,
        ):
            calls = [pool.submit(client.recommend, "", clicks, 10) for _ in range(6)]
            while in_progress(metrics_port) < 1:
                assert not any(c.done() for c in calls), "calls ended before the signal"
                time.sleep(0.005)
            service.proc.send_signal(signal.SIGTERM)
            service.wait_for("shutting down")
            with pytest.raises(grpc.RpcError) as refused:
                client.recommend("late", clicks[:1], 10)
            answers = [c.result() for c in calls]
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert all(len(a.items) == 10 for a in answers)
        assert service.proc.wait(timeout=120) == 0
        service.wait_for("stopped")
    finally:
        service.close()
