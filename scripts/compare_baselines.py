"""GRU4Rec against most-popular, item-KNN and V-SKNN on the default synthetic data, with one
evaluation (all items ranked, ties against the model): a markdown table for the README and a
bar chart.

    .venv/bin/python scripts/compare_baselines.py [--config synthetic_demo] [--param n_epochs=3]
        [--data data/synthetic] [--png docs/baselines.png] [--seed 0]

Data are generated into --data (the default synthetic catalogue and a last-day test split,
as `python -m training generate` writes them), then each model is fitted on train.tsv and
evaluated on test.tsv. "train s" is wall-clock fitting time on this machine.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import matplotlib  # noqa: E402

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from training.baselines import fit_and_evaluate, results_table  # noqa: E402
from training.config import Config  # noqa: E402
from training.data import ItemVocab, Sessions, read_events  # noqa: E402
from training.synthetic import generate_to_dir  # noqa: E402

METRICS = ("recall", "mrr", "ndcg")
LABELS = {"recall": "Recall", "mrr": "MRR", "ndcg": "NDCG"}


def plot(results: dict[str, dict[str, float]], path: Path, k: int = 20) -> None:
    """Grouped bars: one group per metric@k, one bar per model, values written on top."""
    fig, ax = plt.subplots(figsize=(7.5, 3.8), dpi=120)
    width = 0.8 / len(results)
    for m, (name, res) in enumerate(results.items()):
        xs = [i + (m - (len(results) - 1) / 2) * width for i in range(len(METRICS))]
        values = [res[f"{metric}@{k}"] for metric in METRICS]
        bars = ax.bar(xs, values, width, label=name)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=1)
    ax.set_xticks(range(len(METRICS)), [f"{LABELS[metric]}@{k}" for metric in METRICS])
    ax.set_ylim(0, 1)
    ax.set_ylabel("score (higher is better)")
    ax.set_title("Next-click prediction on the synthetic click log (all items ranked)")
    ax.legend(fontsize=8, ncols=len(results), loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="synthetic_demo", help="GRU4Rec config file or preset")
    ap.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--data", default=str(ROOT / "data" / "synthetic"))
    ap.add_argument("--png", default=str(ROOT / "docs" / "baselines.png"))
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    paths = generate_to_dir(args.data, seed=args.seed)
    train_events = read_events(paths["train"])
    vocab = ItemVocab.from_events(train_events)
    train = Sessions.from_events(train_events, vocab)
    test = Sessions.from_events(read_events(paths["test"]), vocab, "drop")
    print(
        f"synthetic data in {args.data}: {train.n_events:,} train clicks in "
        f"{train.n_sessions:,} sessions, {len(vocab):,} items; {test.n_events:,} test clicks "
        f"in {test.n_sessions:,} sessions"
    )
    cfg = Config.from_sources(args.config, args.param)
    results = fit_and_evaluate(train, test, len(vocab), cutoffs=(20,), gru_config=cfg)
    print(f"\nGRU4Rec: --config {args.config} {' '.join(args.param)}; torch threads {args.threads}")
    print(results_table(results, cutoffs=(20,)))
    plot(results, Path(args.png))
    print(f"\nchart: {args.png}")


if __name__ == "__main__":
    main()
