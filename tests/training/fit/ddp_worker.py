"""One rank of tests/training/fit/test_distributed.py, started by torchrun: trains on the
synthetic data and writes its parameters, loss history and test metrics to OUT/rank<r>.pt.

    torchrun --standalone --nproc-per-node 2 tests/training/fit/ddp_worker.py OUT [name=value ...]

`features=random` stands for seeded random item features (a p-RNN), the same on every rank.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from training.config import Config  # noqa: E402
from training.data.logs import ItemVocab, Sessions, preprocess, split_by_time  # noqa: E402
from training.data.synthetic import generate  # noqa: E402
from training.evaluate import GRUScorer, evaluate  # noqa: E402
from training.fit import distributed  # noqa: E402
from training.fit.train import fit  # noqa: E402

BASE = ["layers=32", "batch_size=16", "n_sample=64", "n_epochs=3", "learning_rate=0.1"]
BASE += ["momentum=0.2", "logq=1.0", "threads=1", "device=cpu"]


def synthetic():
    events = preprocess(generate(n_items=300, n_sessions=3000, days=7, seed=3).events)
    train_df, test_df = split_by_time(events, test_days=1)
    vocab = ItemVocab.from_events(train_df)
    return Sessions.from_events(train_df, vocab), Sessions.from_events(test_df, vocab), vocab


def main() -> None:
    out, params = Path(sys.argv[1]), sys.argv[2:]
    rank = distributed.init_from_env("cpu") if distributed.launched_by_torchrun() else None
    train, test, vocab = synthetic()
    if "features=random" in params:
        path = out / f"features{rank.rank if rank else 0}.npy"
        np.save(path, np.random.default_rng(5).normal(size=(len(vocab), 16)).astype(np.float32))
        params = [f"features={path}" if p == "features=random" else p for p in params]
    cfg = Config.from_sources(None, BASE + params)
    model, history = fit(train, len(vocab), cfg, progress=False)
    metrics = evaluate(GRUScorer(model), test, cutoffs=(20,))
    torch.save(
        {
            "state": {k: v.clone() for k, v in model.state_dict().items()},
            "losses": [e.loss for e in history.epochs],
            "events": [e.events for e in history.epochs],
            "metrics": metrics,
        },
        out / f"rank{rank.rank if rank else 0}.pt",
    )


if __name__ == "__main__":
    main()
