"""scripts/bench_service.py's CPU accounting: the load generator's CPU, and the budget the
serving goal leaves server and client together."""

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import bench_service  # noqa: E402


def test_children_cpu_counts_a_finished_load_generators_cpu():
    before = bench_service.children_cpu_s()
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    subprocess.run([sys.executable, "-c", burn], check=True)
    assert bench_service.children_cpu_s() - before >= 0.25


def _row(server, concurrency, calls_per_s, server_us, client_us, busy=0.9):
    return {"server": server, "concurrency": concurrency, "calls_per_s": calls_per_s,
            "cpu_us_per_call": server_us, "client_cpu_us_per_call": client_us,
            "machine_busy": busy}  # fmt: skip


def test_the_budget_is_the_goals_share_of_echo_on_the_cores_echo_kept_busy(monkeypatch):
    monkeypatch.setattr(bench_service.os, "sched_getaffinity", lambda pid: {0, 1})
    rows = [
        _row("gRPC echo (ceiling)", 32, 6_000, 150, 140, busy=0.9),
        _row("service", 1, 500, 2_000, 200),  # another concurrency: not compared
        _row("service", 32, 2_000, 500, 100, busy=0.6),
    ]
    budget = bench_service.cpu_budget(rows, share=0.6)
    # 60% of 6,000 = 3,600 calls/s; 2 cores x 0.9 / 3,600 = 500 us per call
    assert budget["goal_calls_per_s"] == pytest.approx(3_600)
    assert budget["budget_us"] == pytest.approx(500)
    assert budget["service_us"] == pytest.approx(600)
    # 1.8 core-seconds a second over 600 us a call
    assert budget["within_reach_calls_per_s"] == pytest.approx(3_000)


def test_no_budget_without_the_echo_row_or_the_service_at_its_concurrency():
    assert bench_service.cpu_budget([_row("service", 32, 2_000, 500, 100)]) is None
    rows = [_row("gRPC echo (ceiling)", 32, 6_000, 150, 140), _row("service", 8, 1_500, 600, 90)]
    assert bench_service.cpu_budget(rows) is None
