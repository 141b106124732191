"""Daily incremental updates against daily retraining from scratch, on a changing catalogue.

    .venv/bin/python scripts/bench_update.py [--days 10] [--first 5] [--update-epochs 2] \
        [--new-rows mean|init] [--param NAME=VALUE ...]

Clicks come from training.data.synthetic with churn (new items every day, interest decaying
within hours to days). A model is trained on days 1..first; then for each later day d:
  (a) update:  the day before's model continues on day d's clicks (training.fit.update);
  (b) retrain: a model trained from scratch on days 1..d (GRU4Rec preprocessing);
and both are evaluated (training.evaluate, every item ranked) on day d+1. The test clicks
are those on items both models know, in sessions of two or more; clicks on items first seen
on day d+1 are left out (no model can know them) and their share of the day's targets is
printed. "fresh" is Recall@20 on targets among the items first clicked on day d, the ones
the update has just added. Seconds cover preprocessing, training and saving, not the
evaluation. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import Config  # noqa: E402
from training.data.churn import Churn  # noqa: E402
from training.data.logs import ItemVocab, Sessions, item_popularity, preprocess  # noqa: E402
from training.data.synthetic import DAY, START_TIME, generate  # noqa: E402
from training.fit.train import fit, load_model, save_model  # noqa: E402
from training.fit.update import UpdateOptions, evaluate_by_target, save_update, update  # noqa: E402

SETTINGS = [  # small and quick on two CPU cores; the same for every model
    "loss=cross-entropy",
    "layers=64",
    "batch_size=32",
    "n_sample=512",
    "logq=1.0",
    "learning_rate=0.1",
    "momentum=0.2",
    "n_epochs=3",
    "sample_store_size=200000",  # the default 10M draws cost more than a small epoch
    "threads=1",
]


def session_days(events: pd.DataFrame) -> np.ndarray:
    """0-based day of each click's session start."""
    start = events.groupby("SessionId")["Time"].transform("min").to_numpy()
    return ((start - START_TIME) // DAY).astype(np.int64)


def retrain(events: pd.DataFrame, cfg: Config, out: Path) -> float:
    """Train from scratch on `events` (preprocessed first) and save to out; seconds."""
    started = time.perf_counter()
    clicks = preprocess(events)
    vocab = ItemVocab.from_events(clicks)
    train = Sessions.from_events(clicks, vocab)
    model, history = fit(train, len(vocab), cfg, progress=False)
    popularity = item_popularity(train, len(vocab))
    save_model(out, model, cfg, vocab, popularity, {}, history.optimizer_state)
    return time.perf_counter() - started


def common_test(
    day: pd.DataFrame, vocabs: list[ItemVocab], new_today: set[str]
) -> tuple[pd.DataFrame, float, float]:
    """The test day's clicks on items every model knows, sessions of 2+ clicks; the share
    of the day's targets (clicks but a session's first) on items no model knows, and on
    items first clicked that day (most of the former; the rest were too rare to learn)."""
    known_to_all = set.intersection(*(set(v.ids) for v in vocabs))
    known_to_any = set.union(*(set(v.ids) for v in vocabs))
    targets = day[day.groupby("SessionId").cumcount() > 0].ItemId
    unknown = float((~targets.isin(known_to_any)).mean())
    test = day[day.ItemId.isin(known_to_all)]
    test = test[test.groupby("SessionId")["SessionId"].transform("size") >= 2]
    return test, unknown, float(targets.isin(new_today).mean())


def scores(model_dir: Path, test: pd.DataFrame, fresh: set[str]) -> dict[str, float]:
    trained = load_model(model_dir)
    sessions = Sessions.from_events(test, trained.vocab)
    is_fresh = np.isin(trained.vocab.ids, list(fresh))
    result = evaluate_by_target(trained.model, sessions, is_fresh, cutoffs=(20,))
    return {
        "recall": result["all"]["recall@20"],
        "mrr": result["all"]["mrr@20"],
        "fresh": result["new"]["recall@20"],
        "n": result["all"]["n_events"],
        "n_fresh": result["new"]["n_events"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--first", type=int, default=5, help="days of the first training")
    parser.add_argument("--items", type=int, default=1500, help="stock at the start")
    parser.add_argument("--new-items-per-day", type=float, default=150)
    parser.add_argument("--sessions", type=int, default=10_000, help="over all the days")
    parser.add_argument("--update-epochs", type=int, default=2)
    parser.add_argument("--new-rows", default="mean", choices=["mean", "init"])
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", help="also write docs/results/NAME.json (docs/online.md)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = Config.from_sources(None, SETTINGS + args.param)
    churn = Churn(new_items_per_day=args.new_items_per_day)
    options = UpdateOptions(new_rows=args.new_rows)
    events = generate(args.items, args.sessions, days=args.days, seed=args.seed, churn=churn).events
    day = session_days(events)
    first_seen = events.groupby("ItemId")["Time"].min()
    first_day = ((first_seen - START_TIME) // DAY).astype(int)
    print(f"{len(events):,} clicks over {args.days} days, {events.ItemId.nunique():,} items")
    print(
        "| test day | update R@20 | MRR@20 | fresh R@20 | s | retrain R@20 | MRR@20 | "
        "fresh R@20 | s | test targets (fresh) | day's targets unknown (new that day) |"
    )
    print("|---" * 11 + "|")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        retrain(events[day < args.first], cfg, root / f"update-{args.first - 1}")
        for d in range(args.first, args.days - 1):
            started = time.perf_counter()
            epochs = [f"n_epochs={args.update_epochs}"]
            updated = update(root / f"update-{d - 1}", events[day == d], epochs, options)
            save_update(root / f"update-{d}", updated)
            update_s = time.perf_counter() - started
            retrain_s = retrain(events[day <= d], cfg, root / f"retrain-{d}")
            vocabs = [load_model(root / f"{kind}-{d}").vocab for kind in ("update", "retrain")]
            new_today = set(first_day.index[first_day == d + 1])
            test, unknown, new = common_test(events[day == d + 1], vocabs, new_today)
            fresh = set(first_day.index[first_day == d])
            a, b = (scores(root / f"{kind}-{d}", test, fresh) for kind in ("update", "retrain"))
            rows.append((a, b, update_s, retrain_s, unknown, new))
            print(
                f"| {d + 2} | {a['recall']:.4f} | {a['mrr']:.4f} | {a['fresh']:.4f} | "
                f"{update_s:.1f} | {b['recall']:.4f} | {b['mrr']:.4f} | {b['fresh']:.4f} | "
                f"{retrain_s:.1f} | {a['n']:,} ({a['n_fresh']:,}) | {unknown:.1%} ({new:.1%}) |",
                flush=True,
            )
    mean = {k: np.mean([r[0][k] for r in rows]) for k in ("recall", "mrr", "fresh")}
    mean_b = {k: np.mean([r[1][k] for r in rows]) for k in ("recall", "mrr", "fresh")}
    print(
        f"| mean | {mean['recall']:.4f} | {mean['mrr']:.4f} | {mean['fresh']:.4f} | "
        f"{np.mean([r[2] for r in rows]):.1f} | {mean_b['recall']:.4f} | {mean_b['mrr']:.4f} | "
        f"{mean_b['fresh']:.4f} | {np.mean([r[3] for r in rows]):.1f} | | "
        f"{np.mean([r[4] for r in rows]):.1%} ({np.mean([r[5] for r in rows]):.1%}) |"
    )
    print(f"\n{platform.processor() or 'cpu'}, torch {torch.__version__}, 1 thread; {cfg}")
    if args.results:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from provenance import write_results

        keys = ("update", "retrain", "update_s", "retrain_s", "unknown_share", "new_share")
        days = [{"test_day": args.first + 2 + i, **dict(zip(keys, r, strict=True))}
                for i, r in enumerate(rows)]  # fmt: skip
        settings = {k: v for k, v in vars(args).items() if k != "results"}
        write_results(args.results, {"settings": settings, "config": cfg.to_dict(), "days": days})


if __name__ == "__main__":
    main()
