"""What personalisation adds: GRU4Rec, HRNN (init and all) and the user baselines on
synthetic users who return with lasting tastes, overall and over returning users' targets.

    .venv/bin/python scripts/compare_users.py                  # docs/results/users.json
    .venv/bin/python scripts/compare_users.py --users 300 --epochs 1 --results ""   # smoke
    .venv/bin/python scripts/compare_users.py --results "" --tastes p_entry=1 n_tastes=1 \
        p_taste=1 p_follow=0 p_intent=1 p_switch=0 p_favourite=0   # intent hidden at the start

Steps: training.data.users writes a log of users with several sessions over `--days` days
and splits off the sessions ending in the last `--test-days`; every model is trained on the
training clicks; then each test user's training sessions (the history) and test sessions run
in time order through user_evaluate.evaluate_users: full ranking, ties against the model.
GRU4Rec and the item2vec baseline ignore the history; HRNN builds the user's state from it;
BPR-MF, FM and NCF read the user id. The last two rows are references, not methods: GRU4Rec
with a bonus for the items of the user's true taste categories, which only the generator
knows (tastes-oracle), or of the categories the user's training sessions were mostly in
(history-tastes: what the history shows of the tastes, read the simplest way). "returning,
first click" are the returning users' targets that follow a session's first click, where the
session has shown least. Prints a markdown table and, with --results NAME, writes
docs/results/NAME.json with the machine and versions.

GRU4Rec and HRNN share every setting, dropout on the session layers included (--dropout,
0.2: on these logs both do better with it than without). --tastes overrides fields of
training.data.users.Tastes (see its docstring for what the history can add and when).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import Config  # noqa: E402
from training.data.logs import ITEM, SESSION, USER, ItemVocab, Sessions, read_events  # noqa: E402
from training.data.user_batching import UserSessions, with_history  # noqa: E402
from training.data.users import Tastes, users_to_dir  # noqa: E402
from training.evaluation.user_baselines import BPRMF, Item2Vec  # noqa: E402
from training.evaluation.user_evaluate import evaluate_users, scorer_for  # noqa: E402
from training.evaluation.user_neural import FMScorer, NCFScorer  # noqa: E402
from training.fit.hrnn_fit import fit_hrnn  # noqa: E402
from training.fit.train import fit  # noqa: E402

CUTOFFS = (20,)
ORACLE_BONUS = 2.0  # added to a taste item's logit: e^2, 7.4 times the odds


class TastesOracle:
    """A reference, not a method: GRU4Rec's scores plus ORACLE_BONUS for the items of the
    user's true taste categories, which only the generator knows (users.tsv). What knowing
    the lasting taste categories adds to a session model in this simple form (favourite
    items aside, which a user model may also find)."""

    def __init__(
        self, session_scorer, tastes: dict[str, set[int]], item_category, n_categories,
        bonus: float = ORACLE_BONUS,
    ):  # fmt: skip
        self.session, self.bonus = session_scorer, bonus
        self.tastes, self.item_category = tastes, torch.as_tensor(item_category)
        self.n_categories = n_categories

    def start(self, batch_size: int, user_ids) -> None:
        self.session.start(batch_size, user_ids)
        liked = torch.zeros(len(user_ids), self.n_categories)
        for row, user in enumerate(user_ids):
            liked[row, list(self.tastes.get(str(user), ()))] = 1.0
        self.liked = liked  # (plan users, categories)

    def advance(self, step):
        scores = self.session.advance(step)
        users = step.users[step.scored]
        return scores + self.bonus * self.liked[users][:, self.item_category]


def history_tastes(events: pd.DataFrame, vocab, item_category: np.ndarray) -> dict[str, set[int]]:
    """Each user's categories that one of their sessions in `events` was mostly in (the
    most clicked category of the session, the lowest on a tie)."""
    known = events[events[ITEM].isin(vocab.index)]
    category = item_category[known[ITEM].map(vocab.index).to_numpy()]
    frame = known.assign(category=category)
    counts = frame.groupby([USER, SESSION, "category"]).size().rename("n").reset_index()
    counts = counts.sort_values(["n", "category"], ascending=[False, True])
    main = counts.drop_duplicates([USER, SESSION])
    return {user: set(group.category.tolist()) for user, group in main.groupby(USER)}


def read_tastes(paths, vocab) -> tuple[dict[str, set[int]], np.ndarray, int]:
    """The generator's truth: each user's taste categories, each vocab item's category."""
    users = pd.read_csv(paths["users"], sep="\t", dtype=str)
    items = pd.read_csv(paths["items"], sep="\t", dtype={"ItemId": str})
    pairs = zip(users.UserId, users.tastes, strict=True)
    tastes = {user: {int(c) for c in liked.split()} for user, liked in pairs}
    category = dict(zip(items.ItemId, items.category, strict=True))
    item_category = np.array([category[i] for i in vocab.ids], dtype=np.int64)
    return tastes, item_category, int(items.category.max()) + 1


def model_makers(args, train_events, train_plan, n_items, oracle=None):
    """{row name: () -> a user_evaluate scorer}, each trained on the training clicks;
    oracle: read_tastes(...), for the two reference rows."""
    base = dict(
        n_epochs=args.epochs, n_sample=args.n_sample, loss=args.loss, layers=(args.layers,),
        user_layer=args.layers, threads=args.threads, device="cpu",
        dropout_p_hidden=args.dropout,
    )  # fmt: skip
    vocab = ItemVocab.from_events(train_events)
    sessions = Sessions.from_events(train_events, vocab)

    def gru4rec():
        return scorer_for(fit(sessions, n_items, Config(**base), progress=False)[0])

    def hrnn(propagation):
        cfg = Config(architecture="hrnn", user_propagation=propagation, **base)
        return scorer_for(fit_hrnn(train_plan, n_items, cfg, progress=False)[0])

    makers = {
        "gru4rec": gru4rec,
        "hrnn-init": lambda: hrnn("init"),
        "hrnn-all": lambda: hrnn("all"),
        "bpr-mf": lambda: BPRMF.fit(train_plan, n_items),
        "item2vec": lambda: Item2Vec.fit(train_plan.items, train_plan.offsets, n_items),
        "fm": lambda: FMScorer.fit(train_plan, n_items),
        "ncf": lambda: NCFScorer.fit(train_plan, n_items),
    }
    if oracle is not None:
        tastes, category, n_categories = oracle
        seen = history_tastes(train_events, vocab, category)
        makers["tastes-oracle"] = lambda: TastesOracle(gru4rec(), tastes, category, n_categories)
        makers["history-tastes"] = lambda: TastesOracle(gru4rec(), seen, category, n_categories)
    return makers


def parse_tastes(pairs: list[str]) -> Tastes:
    """Tastes with FIELD=VALUE overrides (numbers as the field's type)."""
    fields = {f.name: f.type for f in dataclasses.fields(Tastes)}
    values = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in fields or not value:
            raise SystemExit(f"--tastes: {pair!r} is not FIELD=VALUE with a field of Tastes")
        values[name] = int(value) if fields[name] in ("int", int) else float(value)
    return Tastes(**values)


def table(rows) -> str:
    lines = ["| method | Recall@20 | MRR@20 | returning Recall@20 | returning MRR@20 | "
             "returning, first click: Recall@20 | MRR@20 | train s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        o, b, f = r["overall"], r["returning"], r["returning_first"]
        lines.append(
            f"| {r['method']} | {o['recall@20']:.4f} | {o['mrr@20']:.4f} | "
            f"{b['recall@20']:.4f} | {b['mrr@20']:.4f} | {f['recall@20']:.4f} | "
            f"{f['mrr@20']:.4f} | {r['train_seconds']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--days", type=float, default=14.0)
    ap.add_argument("--test-days", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=5, help="GRU4Rec and HRNN")
    ap.add_argument("--layers", type=int, default=100, help="session and user GRU units")
    ap.add_argument("--n-sample", type=int, default=512)
    ap.add_argument("--loss", default="cross-entropy")
    ap.add_argument("--dropout", type=float, default=0.2, help="GRU4Rec's and HRNN's hidden")
    ap.add_argument("--tastes", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="overrides of training.data.users.Tastes")  # fmt: skip
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", nargs="*", help="only these rows")
    ap.add_argument("--work", type=Path, default=Path("runs/compare_users"))
    ap.add_argument("--results", default="users", help='docs/results/NAME.json; "" = none')
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    paths = users_to_dir(args.work / "data", args.test_days, n_users=args.users,
                         n_items=args.items, days=args.days, seed=args.seed,
                         tastes=parse_tastes(args.tastes))  # fmt: skip
    train_events = read_events(paths["train"], user_key=USER)
    test_events = read_events(paths["test"], user_key=USER)
    vocab = ItemVocab.from_events(train_events)
    train_plan = UserSessions.from_events(train_events, vocab)
    test_plan = UserSessions.from_events(with_history(test_events, train_events), vocab, "drop")
    info = {
        "users": args.users, "train_clicks": len(train_events), "test_clicks": len(test_events),
        "items": len(vocab), "test_users": int(test_events[USER].nunique()),
    }  # fmt: skip
    print(f"# data: {info}", flush=True)
    rows = []
    oracle = read_tastes(paths, vocab)
    for name, make in model_makers(args, train_events, train_plan, len(vocab), oracle).items():
        if args.methods and name not in args.methods:
            continue
        started = time.perf_counter()
        scorer = make()
        seconds = time.perf_counter() - started
        result = evaluate_users(scorer, test_plan, CUTOFFS)
        returning, first = result.pop("returning"), result.pop("returning_first")
        rows.append({"method": name, "overall": result, "returning": returning,
                     "returning_first": first, "train_seconds": round(seconds, 1)})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    settings = {k: str(v) for k, v in vars(args).items()}
    if args.results:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from provenance import write_results

        write_results(args.results, {"data": info, "settings": settings, "rows": rows})
    print(table(rows))


if __name__ == "__main__":
    main()
