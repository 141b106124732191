"""p-RNN on synthetic data: ID-only, feature-only, concatenated input and the parallel
architecture under each training strategy, with results on rare target items apart.

    .venv/bin/python scripts/compare_prnn.py                 # the docs/prnn.md table
    .venv/bin/python scripts/compare_prnn.py --n-items 1000 --n-sessions 5000 --epochs 1

Steps: generate clicks (training.data.synthetic), split off the last day, draw every item's
picture (training.data.images) and extract ResNet features (training.models.features; random weights
unless --weights names a local file), then train each variant with training.fit.train.fit and
rank all items for every test click. "Rare" targets are items in the least popular half of
the catalogue by training clicks. Prints a markdown table and writes the figures as JSON to
--out and, with --results NAME, with the machine and versions to docs/results/NAME.json (the
README table: --results prnn, rendered by scripts/render_results.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import Config  # noqa: E402
from training.data.batching import session_parallel  # noqa: E402
from training.data.images import SyntheticImages  # noqa: E402
from training.data.logs import ItemVocab, Sessions, item_popularity, split_by_time  # noqa: E402
from training.data.synthetic import generate  # noqa: E402
from training.evaluate import GRUScorer, collect_ranks, metrics_from_ranks  # noqa: E402
from training.fit.train import fit  # noqa: E402
from training.models.features import extract_features, file_digest, load_backbone  # noqa: E402

VARIANTS = [  # (row name, architecture, strategy)
    ("ID only (GRU4Rec)", "id", "simultaneous"),
    ("feature only", "feature", "simultaneous"),
    ("concatenated input", "concat", "simultaneous"),
    ("parallel, simultaneous", "parallel", "simultaneous"),
    ("parallel, alternating", "parallel", "alternating"),
    ("parallel, residual", "parallel", "residual"),
    ("parallel, interleaving", "parallel", "interleaving"),
    # control: the same model fed another item's features, so any gain left is capacity
    ("parallel, simultaneous, shuffled features", "parallel", "simultaneous"),
]


def prepare(args: argparse.Namespace) -> tuple[Sessions, Sessions, int, Path, dict]:
    """Training/test sessions, the item count and the features file (vocabulary order)."""
    cat = generate(n_items=args.n_items, n_sessions=args.n_sessions, seed=args.seed)
    train_df, test_df = split_by_time(cat.events, test_days=1.0)
    vocab = ItemVocab.from_events(train_df)
    train = Sessions.from_events(train_df, vocab)
    test = Sessions.from_events(test_df, vocab)
    where = pd.Index(cat.item_ids).get_indexer(vocab.ids)  # catalogue row of each index
    images = SyntheticImages.from_catalog(cat, size=args.image_size, seed=args.seed).subset(where)
    name = f"features_{args.n_items}_{args.n_sessions}_{args.seed}_{args.image_size}px.npy"
    path = args.work / name
    backbone = load_backbone("resnet18", args.weights, seed=args.seed)
    fingerprint = f"resnet18:{file_digest(args.weights)}:synthetic:{args.image_size}"
    started = time.perf_counter()
    feats = extract_features(images, path, backbone, 256, fingerprint=fingerprint)
    shuffled = np.random.default_rng(args.seed).permutation(len(feats))
    np.save(path.with_name(path.stem + "_shuffled.npy"), np.asarray(feats)[shuffled])
    info = {
        "n_items": len(vocab),
        "train_events": train.n_events,
        "test_sessions": test.n_sessions,
        "feature_dim": int(feats.shape[1]),
        "feature_seconds": time.perf_counter() - started,
        "category_probe": category_probe(np.asarray(feats), cat.item_category[where]),
        "category_probe_shuffled": category_probe(
            np.asarray(feats)[shuffled], cat.item_category[where]
        ),
    }
    return train, test, len(vocab), path, info


def _features_for(name: str, path: Path) -> Path:
    return path.with_name(path.stem + "_shuffled.npy") if "shuffled" in name else path


def clicks_in_order(test: Sessions, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) of the test steps in the order collect_ranks meets them (the same
    session-parallel pass)."""
    steps = list(session_parallel(test.items, test.offsets, batch_size))
    return np.concatenate([s.inputs.numpy() for s in steps]), np.concatenate(
        [s.targets.numpy() for s in steps]
    )


def category_probe(features: np.ndarray, category: np.ndarray) -> float:
    """How much of the category the features hold: nearest-centroid accuracy on the odd
    items, centroids from the even ones (standardised features, as the model sees them)."""
    f = (features - features.mean(0)) / np.maximum(features.std(0), 1e-6)
    even = np.arange(len(f)) % 2 == 0
    labels = np.unique(category)
    centroids = np.stack([f[even & (category == c)].mean(0) for c in labels])
    d = ((f[~even][:, None, :] - centroids[None]) ** 2).sum(-1)
    return float((labels[d.argmin(1)] == category[~even]).mean())


def run_variant(name, arch, strategy, args, train, test, n_items, features, rare) -> dict:
    cfg = Config.from_dict(
        {
            "layers": args.layers,
            "feature_layers": args.feature_layers,
            "loss": "cross-entropy",
            "batch_size": args.batch_size,
            "n_sample": args.n_sample,
            "n_epochs": args.epochs,
            "learning_rate": args.learning_rate,
            "architecture": arch,
            "strategy": strategy,
            "features": "" if arch == "id" else str(_features_for(name, features)),
            "seed": args.seed,
            "device": "cpu",
            "sample_store_size": 1_000_000,
        }
    )
    started = time.perf_counter()
    model, history = fit(train, n_items, cfg, progress=False)
    seconds = time.perf_counter() - started
    ranks = collect_ranks(GRUScorer(model), test, batch_size=256)
    inputs, targets = clicks_in_order(test, 256)
    row = {
        "name": name,
        "architecture": arch,
        "strategy": strategy,
        "train_s": seconds,
        "epochs": len(history.epochs),
        "params": sum(p.numel() for p in model.parameters()),
    }
    parts = {"all": np.ones(len(ranks), bool), "rare": rare[targets], "frequent": ~rare[targets],
             "rare_input": rare[inputs]}  # fmt: skip
    for part, mask in parts.items():
        m = metrics_from_ranks(ranks[mask], (20,))
        row[part] = {"recall@20": m["recall@20"], "mrr@20": m["mrr@20"], "n": int(mask.sum())}
    return row


def table(rows: list[dict]) -> str:
    lines = [
        "| model | epochs | Recall@20 | MRR@20 | Recall@20 rare target | MRR@20 rare target "
        "| Recall@20 rare input | MRR@20 rare input | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        parts = ("all", "rare", "rare_input")
        cells = [f"{r[p][m]:.4f}" for p in parts for m in ("recall@20", "mrr@20")]
        lines.append(
            f"| {r['name']} | {r['epochs']} | " + " | ".join(cells) + f" | {r['train_s']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-items", type=int, default=4000)
    ap.add_argument("--n-sessions", type=int, default=20_000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--layers", default="64")
    ap.add_argument("--feature-layers", default="64")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--n-sample", type=int, default=512)
    ap.add_argument("--learning-rate", type=float, default=0.05)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--weights", default=None, help="local resnet18 state_dict; default random")
    ap.add_argument("--variants", nargs="*", help="row names to run (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("runs/prnn"))
    ap.add_argument("--out", type=Path, default=Path("runs/compare_prnn.json"))
    ap.add_argument("--results", help="also write docs/results/NAME.json (README: prnn)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    train, test, n_items, features, info = prepare(args)
    popularity = item_popularity(train, n_items)
    threshold = float(np.median(popularity))
    rare = popularity <= threshold  # the least popular half of the items (ties included)
    info.update(rare_threshold_clicks=threshold, rare_items=int(rare.sum()))
    print(f"# data: {info}; machine: {platform.machine()}", flush=True)
    rows = []
    for name, arch, strategy in VARIANTS:
        if args.variants and name not in args.variants:
            continue
        rows.append(run_variant(name, arch, strategy, args, train, test, n_items, features, rare))
        print(json.dumps(rows[-1]), flush=True)
    settings = {k: str(v) for k, v in vars(args).items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"data": info, "settings": settings, "rows": rows}, indent=1))
    if args.results:
        from provenance import write_results

        write_results(args.results, {"data": info, "settings": settings, "rows": rows})
    print(table(rows))


if __name__ == "__main__":
    main()
