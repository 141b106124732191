"""Training and evaluation speed in events/s, at the reference's RSC15 settings by default.

    python scripts/bench_train.py [--items 37483] [--events 200000] [--param threads=2 ...]

Data are random sessions (speed does not depend on what is learnt). Prints one markdown row.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from training.config import Config
from training.data import Sessions
from training.evaluate import GRUScorer, collect_ranks
from training.train import fit

RSC15 = [
    "loss=cross-entropy",
    "constrained_embedding=True",
    "embedding=0",
    "layers=100",
    "batch_size=32",
    "dropout_p_embed=0.0",
    "dropout_p_hidden=0.4",
    "learning_rate=0.2",
    "momentum=0.2",
    "n_sample=2048",
    "sample_alpha=0.5",
    "logq=1.0",
    "n_epochs=1",
]


def random_sessions(n_items: int, n_events: int, seed: int = 0) -> Sessions:
    rng = np.random.default_rng(seed)
    lengths = np.maximum(2, rng.geometric(1 / 5, size=n_events // 3))
    lengths = lengths[np.cumsum(lengths) <= n_events]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.8  # Zipf-like, like real click logs
    items = rng.choice(n_items, size=int(offsets[-1]), p=pop / pop.sum())
    return Sessions(items.astype(np.int64), offsets, np.arange(len(lengths)).astype(str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=37_483)  # RSC15's catalogue
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--param", action="append", default=[])
    args = parser.parse_args()
    cfg = Config.from_sources(None, RSC15 + args.param)
    data = random_sessions(args.items, args.events)
    model, history = fit(data, args.items, cfg, progress=False)
    train_eps = history.epochs[-1].events_per_second
    started = time.perf_counter()
    ranks = collect_ranks(GRUScorer(model), data, batch_size=512)
    eval_eps = len(ranks) / (time.perf_counter() - started)
    device = next(model.parameters()).device
    where = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    print(
        f"| {where} ({torch.get_num_threads()} threads) | {args.items:,} items | "
        f"loss={cfg.loss} layers={'/'.join(map(str, cfg.layers))} batch={cfg.batch_size} "
        f"n_sample={cfg.n_sample} | train {train_eps:,.0f} ev/s | eval {eval_eps:,.0f} ev/s |"
    )


if __name__ == "__main__":
    main()
