"""Thread defaults from the cgroup CPU quota (v2 and v1 files, faked) and the affinity mask."""

import os

import pytest

from training.fit.threads import cgroup_cpu_limit, default_threads, usable_cpus


def _write(root, name, text):
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(
    ("text", "limit"),
    [("max 100000\n", None), ("150000 100000\n", 1.5), ("50000 100000", 0.5), ("200000", 2.0)],
)
def test_cgroup_v2_cpu_max(tmp_path, text, limit):
    _write(tmp_path, "cpu.max", text)
    assert cgroup_cpu_limit(tmp_path) == limit


@pytest.mark.parametrize(
    ("quota", "period", "limit"), [("-1", "100000", None), ("300000", "100000", 3.0)]
)
def test_cgroup_v1_cfs_quota(tmp_path, quota, period, limit):
    _write(tmp_path, "cpu/cpu.cfs_quota_us", quota)
    _write(tmp_path, "cpu/cpu.cfs_period_us", period)
    assert cgroup_cpu_limit(tmp_path) == limit


def test_no_cgroup_files_means_no_limit(tmp_path):
    assert cgroup_cpu_limit(tmp_path) is None


def test_usable_cpus_is_the_quota_rounded_up_within_the_affinity_mask(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    _write(tmp_path, "cpu.max", "50000 100000")  # half a CPU still runs one thread
    assert usable_cpus(tmp_path) == 1
    _write(tmp_path, "cpu.max", f"{(affinity + 5) * 100000} 100000")  # quota above the mask
    assert usable_cpus(tmp_path) == affinity
    _write(tmp_path, "cpu.max", "max 100000")
    assert usable_cpus(tmp_path) == affinity


@pytest.mark.parametrize(("cpus", "threads"), [(1, 1), (2, 1), (3, 3), (16, 16)])
def test_default_threads(cpus, threads):
    assert default_threads(cpus) == threads


def test_importing_training_makes_idle_openmp_threads_sleep_unless_set():
    import subprocess
    import sys

    code = "import os, training; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.stdout.strip() == "PASSIVE"
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.stdout.strip() == "ACTIVE"


def test_progress_line_says_how_many_threads_train(capsys):
    from tests.conftest import markov_sessions
    from training.config import Config
    from training.fit.train import fit

    cfg = Config(layers=(8,), batch_size=8, n_sample=10, n_epochs=1, threads=1)
    fit(markov_sessions(30, 100, seed=0), 30, cfg, progress=True)
    assert "threads=1" in capsys.readouterr().err
