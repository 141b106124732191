"""Latency and throughput of the service for a 40,000-item model on this machine.

    .venv/bin/python scripts/bench_service.py [--items 40000] [--layers 100] [--calls 3000]

1. builds a GRU4Rec with random weights (speed does not depend on what the weights learnt)
   and exports it with `training.export`;
2. times one Recommend step with ranking in the graph (ONNX TopK) against the step plus
   numpy argpartition over the full score row, the measurement behind export.py's choice;
3. starts `python -m service` on 127.0.0.1 and drives it with `python -m service.loadgen`
   (sessions replayed click by click, closed loop) at each --concurrency;
4. prints markdown table rows for the README.
Client, server and load generator share the machine's cores, so the figures are what one
small box does end to end, not the server alone.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.runtime import ExportedModel  # noqa: E402
from training.config import Config  # noqa: E402
from training.data import ItemVocab  # noqa: E402
from training.export import export_model  # noqa: E402
from training.model import build_model  # noqa: E402
from training.train import save_model  # noqa: E402


def build_export(root: Path, n_items: int, layers: tuple[int, ...]) -> Path:
    torch.manual_seed(0)
    cfg = Config(layers=layers)
    vocab = ItemVocab([f"item{i}" for i in range(n_items)])
    # Zipf-like counts, so the popularity file looks like a real one
    popularity = (1e6 / np.arange(1, n_items + 1)).astype(np.int64)
    save_model(root / "model", build_model(n_items, cfg).eval(), cfg, vocab, popularity, {})
    return export_model(root / "model", root / "export")


def time_ranking(export_dir: Path, k: int = 20, n_excluded: int = 10, reps: int = 2000) -> dict:
    """Microseconds per call: one GRU step + ranking, in the graph vs in numpy."""
    model = ExportedModel.load(export_dir, "cpu")
    rng = np.random.default_rng(0)
    excluded = rng.integers(0, model.n_items, n_excluded)
    state, item = model.zero_state(1), np.array([5], dtype=np.int64)

    def in_graph() -> None:
        scores, items, _ = model.top_k(item, state, k + n_excluded)
        items[0][~np.isin(items[0], excluded)][:k]

    def in_numpy() -> None:
        scores, _ = model.scores(item, state)
        row = scores[0].copy()
        row[excluded] = -np.inf
        top = np.argpartition(row, -k)[-k:]
        top[np.argsort(-row[top], kind="stable")]

    def state_only() -> None:
        model.advance(item, state)

    out = {}
    for name, fn in (
        ("graph_topk", in_graph),
        ("numpy_topk", in_numpy),
        ("state_only", state_only),
    ):
        for _ in range(100):
            fn()
        started = time.perf_counter()
        for _ in range(reps):
            fn()
        out[name] = (time.perf_counter() - started) / reps * 1e6
    return out


def start_service(export_dir: Path, workers: int, ort_threads: int) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "--model", str(export_dir), "--host", "127.0.0.1",
         "--port", "0", "--metrics-port", "0", "--workers", str(workers),
         "--ort-threads", str(ort_threads)],
        cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    port = 0
    assert proc.stderr is not None
    for line in proc.stderr:
        if found := re.search(r"gRPC on 127\.0\.0\.1:(\d+)", line):
            port = int(found[1])
        if "serving model" in line:
            return proc, port
    raise RuntimeError("the service did not start; run it by hand to see why")


def load(export_dir: Path, port: int, calls: int, concurrency: int, duration_s: float) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "service.loadgen", "--target", f"127.0.0.1:{port}",
         "--items-file", str(export_dir / "items.txt"), "--calls", str(calls),
         "--concurrency", str(concurrency), "--duration-s", str(duration_s), "--json"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=40_000)
    parser.add_argument("--layers", type=int, nargs="+", default=[100])
    parser.add_argument("--calls", type=int, default=3000, help="per concurrency level")
    parser.add_argument("--duration-s", type=float, default=60.0, help="per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--ort-threads", type=int, default=1, help="0 = one per core")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        export_dir = build_export(Path(tmp), args.items, tuple(args.layers))
        ranking = time_ranking(export_dir)
        print(
            f"one step at {args.items:,} items, layers {args.layers}: ranking in the graph "
            f"{ranking['graph_topk']:.0f} us, step + numpy argpartition "
            f"{ranking['numpy_topk']:.0f} us, state-only step {ranking['state_only']:.0f} us"
        )
        proc, port = start_service(export_dir, args.workers, args.ort_threads)
        try:
            rows = [
                (c, load(export_dir, port, args.calls, c, args.duration_s))
                for c in args.concurrency
            ]
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    cpus = os.cpu_count()
    print("\n| items | layers | cores | concurrency | calls | p50 ms | p99 ms | calls/s | errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    for concurrency, s in rows:
        print(
            f"| {args.items:,} | {'/'.join(map(str, args.layers))} | {cpus} | {concurrency} | "
            f"{s['calls']} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['calls_per_s']:.0f} | "
            f"{s['errors']} |"
        )


if __name__ == "__main__":
    main()
