"""The returning-user check on a news-shaped log with readers: GRU4Rec against HRNN as the
team runs it on the held-back news log (five days as history and training, the next day as
test, one epoch, the reference RSC15 parameters, clicks on unknown stories dropped).

    .venv/bin/python scripts/compare_news_readers.py        # docs/results/news_readers.json
    .venv/bin/python scripts/compare_news_readers.py --scale 0.05 --results ""   # smoke
    .venv/bin/python scripts/compare_news_readers.py --readers taste_boost=1 --results ""

Steps: training.data.news draws `--days` days at `--scale` with training.data.users.Readers
(86% of the last day's next clicks from readers seen on an earlier day, as on the real log;
each reader follows a few topics); GRU4Rec's filtering (preprocess); the last day is the test
(split_by_time drops clicks on stories unseen in training). GRU4Rec and HRNN share the preset
(--preset, default rsc15_xe_shared_100_best) and --epochs; evaluate_users runs each test
reader's training sessions (the history), then the test sessions, in time order.
"hrnn-init, no history" is the same trained HRNN run as a session model (its user state
zero): what HRNN's lead owes to the history rather than to its training. Two reference
rows, not methods: GRU4Rec plus a bonus for the stories of the reader's true topics
(topics-oracle, known only to the generator), or of the topics their training sessions were
mostly in (history-topics). Prints a markdown table (compare_users.table) and, with
--results NAME, writes docs/results/NAME.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare_users import TastesOracle, history_tastes, table  # noqa: E402

from training.config import Config, read_config_file  # noqa: E402
from training.data.logs import ITEM, USER, ItemVocab, Sessions, preprocess, split_by_time  # noqa: E402
from training.data.news import NewsProfile, generate_news  # noqa: E402
from training.data.user_batching import UserSessions, with_history  # noqa: E402
from training.data.users import Readers  # noqa: E402
from training.evaluation.user_evaluate import SessionScorer, evaluate_users, scorer_for  # noqa: E402
from training.fit.hrnn_fit import fit_hrnn  # noqa: E402
from training.fit.train import fit  # noqa: E402

CUTOFFS = (20,)


def parse_readers(pairs: list[str]) -> Readers:
    """Readers with FIELD=VALUE overrides (numbers as the field's type)."""
    fields = {f.name: f.type for f in dataclasses.fields(Readers)}
    values = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in fields or not value:
            raise SystemExit(f"--readers: {pair!r} is not FIELD=VALUE with a field of Readers")
        values[name] = int(value) if fields[name] in ("int", int) else float(value)
    return Readers(**values)


def makers(args, seed, readers, train_events, n_items, topics, item_topic, n_topics):
    """{row name: () -> a user_evaluate scorer}, each trained on the training clicks."""
    base = {**read_config_file(args.preset), "n_epochs": args.epochs, "threads": args.threads,
            "device": "cpu", "seed": seed}  # fmt: skip
    vocab = ItemVocab.from_events(train_events)
    sessions = Sessions.from_events(train_events, vocab)
    plan = UserSessions.from_events(train_events, vocab)

    trained = []  # GRU4Rec once, for its row and both references

    def gru4rec():
        if not trained:
            trained.append(fit(sessions, n_items, Config.from_dict(base), progress=False)[0])
        return scorer_for(trained[0])

    hrnns: dict = {}  # each propagation trained once, for its row and its no-history row

    def hrnn(propagation, history=True):
        if propagation not in hrnns:
            extra = dict(pair.split("=", 1) for pair in args.hrnn_param)
            cfg = Config.from_dict({**base, "architecture": "hrnn",
                                    "user_propagation": propagation, **extra})  # fmt: skip
            hrnns[propagation] = fit_hrnn(plan, n_items, cfg, progress=False)[0]
        model = hrnns[propagation]
        return scorer_for(model) if history else SessionScorer(model)

    seen = history_tastes(train_events, vocab, item_topic)
    bonus = float(np.log(readers.taste_boost))  # the odds the generator gives the topics
    return {
        "gru4rec": gru4rec,
        "hrnn-init": lambda: hrnn("init"),
        "hrnn-all": lambda: hrnn("all"),
        "hrnn-init, no history": lambda: hrnn("init", history=False),
        "topics-oracle": lambda: TastesOracle(gru4rec(), topics, item_topic, n_topics, bonus),
        "history-topics": lambda: TastesOracle(gru4rec(), seen, item_topic, n_topics, bonus),
    }


def run_seed(args, seed: int, readers: Readers) -> tuple[dict, list[dict]]:
    """One log drawn with `seed`, every method trained and evaluated on it: (data, rows)."""
    log = generate_news(NewsProfile(), days=args.days, seed=seed, scale=args.scale,
                        readers=readers)  # fmt: skip
    train_events, test_events = split_by_time(preprocess(log.events), test_days=1.0)
    vocab = ItemVocab.from_events(train_events)
    topic_of = dict(zip(log.item_ids, log.topic, strict=True))
    item_topic = np.array([topic_of[i] for i in vocab.ids], dtype=np.int64)
    topics = {user: set(t.tolist()) for user, t in log.reader_topics.items()}
    test_plan = UserSessions.from_events(with_history(test_events, train_events), vocab, "drop")
    data = {
        "train_clicks": len(train_events), "test_clicks": len(test_events),
        "items": len(vocab), "test_readers": int(test_events[USER].nunique()),
        "test_stories": int(test_events[ITEM].nunique()),
    }  # fmt: skip
    print(f"# seed {seed}: {data}", flush=True)
    rows = []
    made = makers(args, seed, readers, train_events, len(vocab), topics, item_topic,
                  int(log.topic.max()) + 1)  # fmt: skip
    for name, make in made.items():
        if name not in args.methods:
            continue
        started = time.perf_counter()
        scorer = make()
        seconds = time.perf_counter() - started
        result = evaluate_users(scorer, test_plan, CUTOFFS)
        returning, first = result.pop("returning"), result.pop("returning_first")
        rows.append({"method": name, "overall": result, "returning": returning,
                     "returning_first": first, "train_seconds": round(seconds, 1)})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return data, rows


def mean_rows(per_seed: list[list[dict]]) -> list[dict]:
    """Each method's metrics averaged over the seeds (methods in the first seed's order)."""
    out = []
    for i, first in enumerate(per_seed[0]):
        runs = [rows[i] for rows in per_seed]
        row: dict = {"method": first["method"]}
        for part in ("overall", "returning", "returning_first"):
            row[part] = {k: float(np.mean([r[part][k] for r in runs])) for k in first[part]}
        row["train_seconds"] = float(np.mean([r["train_seconds"] for r in runs]))
        out.append(row)
    return out


def gains(per_seed: list[list[dict]], method: str = "hrnn-init") -> list[dict]:
    """Per seed, `method` against GRU4Rec over returning readers' targets (relative)."""
    out = []
    for rows in per_seed:
        by = {r["method"]: r["returning"] for r in rows}
        if method in by and "gru4rec" in by:
            out.append({k: by[method][k] / by["gru4rec"][k] - 1 for k in ("recall@20", "mrr@20")})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="of the news profile's traffic")
    ap.add_argument("--days", type=float, default=6.0, help="the last one is the test")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--readers", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="overrides of training.data.users.Readers")  # fmt: skip
    ap.add_argument("--preset", default="rsc15_xe_shared_100_best", help="GRU4Rec's and HRNN's")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--hrnn-param", nargs="*", default=[], metavar="NAME=VALUE",
                    help="HRNN's own settings over the preset, e.g. user_layer=50")  # fmt: skip
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--methods",
        nargs="*",
        help="rows (default: all but hrnn-all)",
        default=[
            "gru4rec",
            "hrnn-init",
            "hrnn-init, no history",
            "topics-oracle",
            "history-topics",
        ],  # fmt: skip
    )
    ap.add_argument("--results", default="news_readers", help='docs/results/NAME.json; ""')
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    readers = parse_readers(args.readers)
    runs = [run_seed(args, seed, readers) for seed in args.seeds]
    per_seed = [rows for _, rows in runs]
    rows = mean_rows(per_seed)
    versus = gains(per_seed)
    for seed, g in zip(args.seeds, versus, strict=True):
        print(f"seed {seed}: hrnn-init against gru4rec, returning readers: Recall@20 "
              f"{g['recall@20']:+.1%}, MRR@20 {g['mrr@20']:+.1%}")  # fmt: skip
    if args.results:
        from provenance import write_results

        settings = {k: str(v) for k, v in vars(args).items()}
        write_results(args.results, {
            "data": runs[0][0], "settings": settings, "readers": dataclasses.asdict(readers),
            "rows": rows, "seeds": args.seeds, "per_seed": per_seed, "hrnn_gains": versus,
        })  # fmt: skip
    print(table(rows))


if __name__ == "__main__":
    main()
