"""Bloom embeddings on a large generated catalogue: accuracy, model size and peak training
memory for each compression ratio m / n_items and number of hashes k.

    .venv/bin/python scripts/bench_bloom.py                       # the docs/bloom.md table
    .venv/bin/python scripts/bench_bloom.py --n-items 20000 --ratios 0.5 --hashes 3   # quick
    # a click log shaped like RSC15 with the published parameters, plain sum vs item step
    .venv/bin/python scripts/bench_bloom.py --config rsc15_xe_shared_100_best --epochs 3 \
        --n-items 20000 --n-sessions 50000 --zipf 1.0 --ratios 0.5 0.25 0.125 --hashes 3 \
        --item-step both --out runs/bench_bloom_rsc15.json
    # the README table: that command with --n-sessions 40000 --results bloom

The data are drawn once (training.data.synthetic, every catalogue item in the vocabulary, the last
day of sessions as test set); each configuration then trains in a fresh subprocess, so its
peak resident memory (getrusage ru_maxrss, read right after training) is its own. "RSS over
start" subtracts the resident size measured just before training (Python, torch, the data).
Prints a markdown table and writes every figure to --out as JSON (and with --results NAME to
docs/results/NAME.json with the machine and versions, for scripts/render_results.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rss_mb() -> float:
    """Current resident set size in MB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def make_data(args: argparse.Namespace, path: Path) -> dict[str, int]:
    from training.data.logs import ItemVocab, Sessions, split_by_time
    from training.data.synthetic import generate

    cat = generate(
        n_items=args.n_items, n_sessions=args.n_sessions, seed=args.seed, zipf_exponent=args.zipf
    )
    train, test = split_by_time(cat.events, test_days=1.0)
    vocab = ItemVocab(cat.item_ids)  # the whole catalogue, clicked or not
    tr = Sessions.from_events(train, vocab)
    te = Sessions.from_events(test, vocab)
    np.savez(
        path,
        n_items=len(vocab),
        train_items=tr.items,
        train_offsets=tr.offsets,
        test_items=te.items,
        test_offsets=te.offsets,
    )
    return {
        "n_items": len(vocab),
        "train_events": tr.n_events,
        "test_events": te.n_events,
        "train_sessions": tr.n_sessions,
        "test_sessions": te.n_sessions,
    }


def worker(params: dict, data_path: Path) -> dict:
    """Train and evaluate one configuration; runs in its own process."""
    import torch

    from training.config import Config
    from training.data.logs import Sessions
    from training.evaluate import GRUScorer, evaluate
    from training.fit.train import fit

    torch.set_num_threads(params.pop("threads"))
    data = np.load(data_path)
    n_items = int(data["n_items"])
    train = Sessions(data["train_items"], data["train_offsets"], np.arange(1))
    test = Sessions(data["test_items"], data["test_offsets"], np.arange(1))
    cfg = Config.from_dict(params)
    rss_start = _rss_mb()
    started = time.perf_counter()
    model, history = fit(train, n_items, cfg, progress=False)
    train_s = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KB on Linux
    n_params = sum(p.numel() for p in model.parameters())
    n_buffer = sum(b.numel() * b.element_size() for b in model.buffers())
    res = evaluate(GRUScorer(model), test, cutoffs=(20,), batch_size=256)
    return {
        "bloom_bits": cfg.bloom_bits,
        "bloom_hashes": cfg.bloom_hashes,
        "item_step": cfg.bloom_item_step,
        "m": getattr(model, "n_bits", n_items),
        "params": n_params,
        "model_mb": (n_params * 4 + n_buffer) / 2**20,
        "rss_start_mb": rss_start,
        "peak_rss_mb": peak,
        "train_s": train_s,
        "loss": history.epochs[-1].loss,
        "recall@20": res["recall@20"],
        "mrr@20": res["mrr@20"],
        "n_test": res["n_events"],
    }


def run_config(params: dict, data_path: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", json.dumps(params), "--data", str(data_path)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"configuration {params} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def shared_codes(n_items: int, m: int, k: int) -> int:
    """How many items share all k bits with another item (their scores always tie)."""
    from training.models.bloom import bloom_positions

    codes = bloom_positions(range(n_items), m, k)
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return int((counts[inverse.ravel()] > 1).sum())


def table(rows: list[dict], n_items: int) -> str:
    lines = [
        "| m / n_items | k | rows summed | m | items sharing all k bits | Recall@20 | MRR@20 "
        "| parameters | model MB | peak RSS MB | RSS over start MB | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        bloom = r["bloom_bits"] != 0
        ratio = f"{r['m'] / n_items:.3f}" if bloom else "no Bloom"
        k = str(r["bloom_hashes"]) if bloom else "-"
        summed = ("x 1/k" if r.get("item_step", True) else "plain") if bloom else "-"
        shared = f"{shared_codes(n_items, r['m'], r['bloom_hashes']):,}" if bloom else "-"
        lines.append(
            f"| {ratio} | {k} | {summed} | {r['m']:,} | {shared} | {r['recall@20']:.4f} "
            f"| {r['mrr@20']:.4f} | {r['params']:,} | {r['model_mb']:.1f} "
            f"| {r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] - r['rss_start_mb']:.0f} "
            f"| {r['train_s']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-items", type=int, default=100_000)
    ap.add_argument("--n-sessions", type=int, default=40_000)
    ap.add_argument("--ratios", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.125])
    ap.add_argument("--hashes", type=int, nargs="+", default=[2, 3, 4])
    # without --config: 32 units, batch 128, 512 samples; with it, the config's unless given
    ap.add_argument("--layers")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--n-sample", type=int)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--zipf", type=float, default=0.9, help="popularity skew of the catalogue")
    ap.add_argument(
        "--config",
        help="a preset or config file for everything the other flags do not set "
        "(e.g. rsc15_xe_shared_100_best); default: cross-entropy with Config's defaults",
    )
    ap.add_argument(
        "--item-step",
        choices=["on", "off", "both"],
        default="on",
        help="bloom_item_step: the 1/k-scaled sum of rows (on), the plain sum (off), or both",
    )
    ap.add_argument("--out", type=Path, default=Path("runs/bench_bloom.json"))
    ap.add_argument("--table-from", type=Path, help="print the table of an earlier --out")
    ap.add_argument("--results", help="also write docs/results/NAME.json (README: bloom)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker), args.data)))
        return
    if args.table_from:
        saved = json.loads(args.table_from.read_text())
        print(table(saved["rows"], saved["data"]["n_items"]))
        return
    from training.config import read_config_file

    shape = {"layers": args.layers, "batch_size": args.batch_size, "n_sample": args.n_sample}
    base = {
        **({"layers": "32", "batch_size": 128, "n_sample": 512} if not args.config else {}),
        **(read_config_file(args.config) if args.config else {}),
        **{name: value for name, value in shape.items() if value is not None},
        "n_epochs": args.epochs,
        "loss": "cross-entropy",
        "seed": args.seed,
        "device": "cpu",
        "sample_store_size": 1_000_000,
        "threads": args.threads,
    }
    steps = {"on": [True], "off": [False], "both": [False, True]}[args.item_step]
    configs = [{**base, "bloom_bits": 0.0}] + [
        {**base, "bloom_bits": r, "bloom_hashes": k, "bloom_on": "both", "bloom_item_step": s}
        for r in args.ratios
        for k in args.hashes
        for s in steps
    ]
    with tempfile.TemporaryDirectory() as tmp:
        data_path = Path(tmp) / "data.npz"
        info = make_data(args, data_path)
        print(f"# data: {info}; machine: {platform.machine()}, {_cpus()} CPU(s)", flush=True)
        rows = []
        for params in configs:
            rows.append(run_config(dict(params), data_path))
            print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    dropped = ("worker", "data", "out", "results", "table_from")
    settings = {k: v for k, v in vars(args).items() if k not in dropped}
    args.out.write_text(json.dumps({"data": info, "settings": settings, "rows": rows}, indent=1))
    if args.results:
        from provenance import write_results

        write_results(args.results, {"data": info, "settings": settings, "rows": rows})
    print(table(rows, info["n_items"]))


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
