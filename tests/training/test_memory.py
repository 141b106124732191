"""An epoch's memory grows with the index arrays only: a few bytes per click, nothing per step
(per-step tensors kept for the whole epoch would cost hundreds of bytes per click: the
negatives alone are n_sample x 8 bytes per step)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from bench_memory import measure  # noqa: E402


@pytest.mark.slow
def test_peak_memory_grows_by_a_few_bytes_per_click():
    params = ["layers=16", "batch_size=32", "n_sample=256", "sample_store_size=100000"]
    small, large = measure(5_000, [30_000, 330_000], params)
    per_event = (large["peak"] - small["peak"]) / (large["events"] - small["events"])
    # items as numpy and torch int64 (16 B), generated data's own temporaries, allocator slack
    assert per_event < 100, f"{per_event:.0f} bytes per training event"
