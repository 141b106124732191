"""Why Bloom output loses accuracy on a real-shaped click log, one suspect at a time.

Every variant trains the published RSC15 parameters (rsc15_xe_shared_100_best) on the same
generated log (about 2,800 items and 72,000 training clicks with popularity skew 1.0, like
the held-back log of issue 11) with m = n_items / 4 bits, and is evaluated with full
ranking, ties against the model. The variants change one thing against the paper's plain
Bloom model ("plain": the sum of an item's k rows):

    full          no Bloom compression
    plain         the paper's model, k hashes (plain:2 for k = 2)
    input/output  Bloom on one side only
    paper-loss    the paper's loss: softmax over the m bits against the target's Bloom
                  vector (no sampled negatives), instead of cross-entropy over items
    no-logq       logq=0
    item-bias     plus one bias per item (popularity need not live in shared rows)
    balanced      popular items first, each bit from two pybloom-live hashes, the less
                  loaded one (collisions among popular items avoided)
    head          the most popular items (75% of m) get a row of their own, the rest Bloom
    lr/3          every learning rate divided by k
    item-step     bloom_item_step=True (the default now): the rows' sum times 1/k

    .venv/bin/python scripts/bloom_ablation.py                       # every variant, 3 epochs
    .venv/bin/python scripts/bloom_ablation.py --epochs 10 --variants full plain item-step
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import training.fit.train as train_module  # noqa: E402
from training.config import Config, read_config_file  # noqa: E402
from training.data.logs import ItemVocab, Sessions, split_by_time  # noqa: E402
from training.data.synthetic import generate  # noqa: E402
from training.evaluate import GRUScorer, evaluate  # noqa: E402
from training.models.bloom import BloomGRU4Rec, bloom_positions  # noqa: E402

VARIANTS = (
    "full", "plain", "plain:2", "input", "output", "paper-loss", "no-logq", "item-bias",
    "balanced", "head", "lr/3", "item-step", "item-step:2",
)  # fmt: skip


class ItemBiasBloom(BloomGRU4Rec):
    def __init__(self, n_items: int, cfg: Config):
        super().__init__(n_items, cfg)
        self.item_bias = nn.Embedding(n_items, 1, sparse=True)
        nn.init.zeros_(self.item_bias.weight)

    def score(self, h, targets=None):
        bias = self.item_bias.weight[:, 0] if targets is None else self.item_bias(targets)[:, 0]
        return super().score(h, targets) + bias


class PaperLossBloom(BloomGRU4Rec):
    """In training, the target's log-likelihood over the m bits (B,): what paper_loss sums."""

    def score(self, h, targets=None):
        if not (self.training and targets is not None):
            return super().score(h, targets)
        log_probs = F.log_softmax(torch.addmm(self.By.weight.T, h, self.Wy.weight.T), dim=1)
        return log_probs.gather(1, self.item_positions[targets[: len(h)]]).sum(dim=1)


def paper_loss(name, scores, **unused):
    return -scores.sum()


def balanced_positions(popularity: np.ndarray, m: int, k: int) -> np.ndarray:
    """Two pybloom-live hashes per slice; popular items first take the less loaded bit."""
    n = len(popularity)
    choices = [bloom_positions(range(n), m, k), bloom_positions([f"{i}#1" for i in range(n)], m, k)]
    load, table = np.zeros(m), np.zeros((n, k), dtype=np.int64)
    for i in np.argsort(-popularity, kind="stable"):
        for j in range(k):
            bit = min((c[i, j] for c in choices), key=lambda b: load[b])
            table[i, j], load[bit] = bit, load[bit] + popularity[i]
    return table


def head_positions(popularity: np.ndarray, m: int, k: int, share: float = 0.75) -> np.ndarray:
    """The int(share * m) most popular items get one row each (k times); the rest hash
    into the remaining rows."""
    n_head = int(m * share)
    order = np.argsort(-popularity, kind="stable")
    table = np.zeros((len(popularity), k), dtype=np.int64)
    table[order[:n_head]] = np.arange(n_head)[:, None]
    tail = order[n_head:]
    per_slice = (m - n_head) // k
    table[tail] = bloom_positions([int(i) for i in tail], per_slice * k, k) + n_head
    return table


def build(variant: str, n_items: int, base: dict, popularity: np.ndarray):
    """(config, model or None for build_model's) of one variant."""
    name, _, hashes = variant.partition(":")
    params = {**base, "bloom_bits": 0.25, "bloom_hashes": int(hashes or 3), "bloom_on": "both"}
    params["bloom_item_step"] = name == "item-step"
    if name == "full":
        params["bloom_bits"] = 0.0
    elif name in ("input", "output"):
        params["bloom_on"] = name
    elif name == "no-logq":
        params["logq"] = 0.0
    elif name == "lr/3":
        params["learning_rate"] = base["learning_rate"] / 3
    elif name == "paper-loss":
        params["n_sample"] = 0
    cfg = Config.from_dict(params)
    train_module.compute_loss = paper_loss if name == "paper-loss" else ORIGINAL_LOSS
    if name == "item-bias":
        return cfg, ItemBiasBloom(n_items, cfg)
    if name == "paper-loss":
        model = PaperLossBloom(n_items, cfg)
        model.Wy.sparse = model.By.sparse = False  # the loss reads every row
        return cfg, model
    if name in ("balanced", "head"):
        model = BloomGRU4Rec(n_items, cfg)
        make = balanced_positions if name == "balanced" else head_positions
        model.item_positions.copy_(
            torch.as_tensor(make(popularity, model.n_bits, cfg.bloom_hashes))
        )
        return cfg, model
    return cfg, None


ORIGINAL_LOSS = train_module.compute_loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--n-items", type=int, default=2900)
    ap.add_argument("--n-sessions", type=int, default=13_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    cat = generate(
        n_items=args.n_items, n_sessions=args.n_sessions, seed=args.seed, zipf_exponent=1.0
    )
    train, test = split_by_time(cat.events, test_days=1.0)
    vocab = ItemVocab.from_events(train)
    train_s = Sessions.from_events(train, vocab)
    test_s = Sessions.from_events(test, vocab, unknown="drop")
    popularity = np.bincount(train_s.items, minlength=len(vocab)).astype(float)
    print(f"# {len(vocab)} items, {train_s.n_events} training clicks, {args.epochs} epochs")
    base = read_config_file("rsc15_xe_shared_100_best")
    base.update(n_epochs=args.epochs, device="cpu", threads=args.threads, seed=42)
    print("| variant | Recall@20 | MRR@20 | final loss | seconds |\n|---|---|---|---|---|")
    for variant in args.variants:
        cfg, model = build(variant, len(vocab), base, popularity)
        started = time.perf_counter()
        model, history = train_module.fit(train_s, len(vocab), cfg, progress=False, model=model)
        res = evaluate(GRUScorer(model), test_s, cutoffs=(20,), batch_size=256)
        print(
            f"| {variant} | {res['recall@20']:.4f} | {res['mrr@20']:.4f} "
            f"| {history.epochs[-1].loss:.3f} | {time.perf_counter() - started:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
