"""Replay a click log through the service's own recommendation code, in time order.

    python -m service.tools.replay --model EXPORT_DIR --history HISTORY --test TEST \\
        --cutoffs 20 --json FILE [--no-online] [--no-model] [--exclude-clicked]
    python -m service.tools.replay --baseline decayed-cooccurrence --history HISTORY --test TEST

No gRPC, the same pipeline (recommender.Recommender, with the online layer the server
would have): first every HISTORY click is fed in time order (the online layer learns;
nothing is scored, the model is not run); then the TEST clicks are walked in time order
across all sessions. Each click is one call, as the frontend would make it: the session's
clicks so far (the most recent --max-clicks), at the click's own time. The call's answer is
the prediction for the session's next click, scored when that click comes; then the next
click's call teaches the online layer. Every next click counts, including clicks on items
the model has never seen (counted as misses when nothing ranks them), so the figures are
what the service would have achieved on that traffic, unlike GRU4Rec's usual protocol,
which drops such clicks. An item the model does not know is announced to the catalogue
(catalogue.py) at its first click in the log, history or test, as a catalogue feed would
announce it when it goes on sale; the learning guard (guard.py) applies as in the server.

--baseline replays one of service.tools.online_baselines' recommenders through the same walk
(walk(): each call learns its click, then answers), no model needed.

JSON keys: recall@K and mrr@K for each cutoff, n_predictions, unknown_target_share (targets
the model's vocabulary lacks: what a frozen model could never get), seconds,
seconds_per_call (the test walk's time per click: a call, or a baseline's learn and
recommend), settings, and
with the online layer "online": the ranker's learnt weights by feature, each source's
running hit rate (share of next clicks in its top 20), feedback and update counts.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..learning.catalogue import Catalogue
from ..learning.guard import GuardConfig, LearningGuard
from ..learning.online import OnlineConfig, OnlineModel
from ..pipeline.blend import SCORERS, BlendConfig, OnlineLayer, online_config_for
from ..pipeline.decode import Limits
from ..pipeline.recommender import Recommender
from ..pipeline.sessions import SessionCache
from ..proto import recommender_pb2 as pb
from ..runtime import ExportedModel
from .online_baselines import BASELINES, Baseline


@dataclass(frozen=True)
class Click:
    session: str
    item: str
    time: float


def read_clicks(path: str | Path) -> list[Click]:
    """Clicks of a TSV or CSV log with SessionId, ItemId, Time (Unix seconds) columns, in
    time order (a session's clicks keep their file order among equal times)."""
    path = Path(path)
    delimiter = "," if path.suffix == ".csv" else "\t"
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        missing = {"SessionId", "ItemId", "Time"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(
                f"{path}: no column {', '.join(sorted(missing))}; a click log has SessionId, "
                "ItemId and Time (Unix seconds)"
            )
        clicks = [Click(r["SessionId"], r["ItemId"], float(r["Time"])) for r in reader]
    order = sorted(range(len(clicks)), key=lambda i: clicks[i].time)  # stable
    return [clicks[i] for i in order]


def build_engine(
    export_dir: str | Path,
    online: bool = True,
    use_model: bool = True,
    blend: BlendConfig | None = None,
    online_config: OnlineConfig | None = None,
    max_clicks: int = 200,
    announce: Iterable[str] = (),
) -> Recommender:
    """The recommender the server would build for this export (CPU, default settings), its
    catalogue holding the model's items and `announce` (as a site that announces every
    item when it publishes it, through PutItems, would have it)."""
    model = ExportedModel.load(export_dir, "cpu", threads=1)
    layer = None
    if online:
        blend = blend or BlendConfig()
        layer = OnlineLayer(OnlineModel(online_config or online_config_for(blend)), blend)
    cache = SessionCache(1_000_000, 10 * 86_400.0)  # replay time is not the wall clock
    guard = LearningGuard(GuardConfig(), Catalogue())
    guard.catalogue.put(((item, 0.0) for item in set(announce)), 0.0)  # 0: never expires
    return Recommender(model, cache, Limits(max_clicks=max_clicks), online=layer,
                       use_model=use_model, guard=guard)  # fmt: skip


def log_items(*logs: Sequence[Click]) -> set[str]:
    """Every item of the logs: what build_engine(announce=...) takes for a replay."""
    return {click.item for log in logs for click in log}


Learn = Callable[[str, list[str], float], object]  # (session, its clicks so far, time)
Answer = Callable[[str, list[str], float, int], list[str]]  # the same and k -> ids


def walk(
    history: Sequence[Click],
    test: Sequence[Click],
    learn: Learn | None,
    answer: Answer,
    cutoffs: Sequence[int] = (20,),
    max_clicks: int = 200,
    known: Collection[str] | None = None,
    progress: bool = False,
) -> dict:
    """The protocol of the module docstring for any recommender: learn(session, clicks,
    time) for every history click in time order, then for every test click answer(session,
    clicks, time, k) (which learns the click itself, as a call does), the answer scored
    against the session's next click. known: the model's items, for unknown_target_share."""
    started = time.perf_counter()
    sessions: dict[str, list[str]] = defaultdict(list)
    if learn is not None:
        for click in history:
            clicks = sessions[click.session]
            clicks.append(click.item)
            learn(click.session, clicks[-max_clicks:], click.time)
    sessions.clear()
    calls_started = time.perf_counter()
    k = max(cutoffs)
    pending: dict[str, list[str]] = {}  # session -> its last answer, awaiting the next click
    ranks: list[float] = []
    unknown_targets = 0
    for n, click in enumerate(test):
        clicks = sessions[click.session]
        answer_before = pending.pop(click.session, None)
        if answer_before is not None:  # this click is the target of the session's last call
            hit = click.item in answer_before
            ranks.append(answer_before.index(click.item) + 1 if hit else np.inf)
            unknown_targets += known is not None and click.item not in known
        clicks.append(click.item)
        pending[click.session] = answer(click.session, clicks[-max_clicks:], click.time, k)
        if progress and n % 5000 == 0:
            print(f"\r{n:,}/{len(test):,} clicks", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    ranks_array = np.asarray(ranks, dtype=np.float64)
    out: dict = {"n_predictions": len(ranks)}
    for cutoff in cutoffs:
        hit = ranks_array <= cutoff
        out[f"recall@{cutoff}"] = float(hit.mean()) if len(ranks) else 0.0
        reciprocal = np.where(hit, 1.0 / ranks_array, 0.0)
        out[f"mrr@{cutoff}"] = float(reciprocal.mean()) if len(ranks) else 0.0
    out["unknown_target_share"] = unknown_targets / len(ranks) if ranks else 0.0
    out["seconds"] = round(time.perf_counter() - started, 2)
    # the test walk alone (one call per click; history learning excluded)
    out["seconds_per_call"] = (time.perf_counter() - calls_started) / max(len(test), 1)
    return out


def replay(
    engine: Recommender,
    history: Sequence[Click],
    test: Sequence[Click],
    cutoffs: Sequence[int] = (20,),
    exclude_clicked: bool = False,
    progress: bool = False,
) -> dict:
    """Progressive validation of the service's pipeline over `test` after learning
    `history` (walk()); with the online layer, its report() (the ranker's learnt weights and
    the sources' hit rates) under "online"."""

    def announce(item: str, t: float) -> None:  # at its first click (module docstring)
        if item not in engine.model.index and not engine.catalogue.admits(item, t):
            engine.catalogue.put([(item, 0.0)], t)

    def answer(session: str, clicks: list[str], t: float, k: int) -> list[str]:
        announce(clicks[-1], t)
        request = pb.RecommendRequest(
            session_id=session, clicks=clicks, top_k=k, exclude_clicked=exclude_clicked
        )
        return engine.recommend_now(engine.decode(request), now=t).item_ids

    def learn_history(session: str, clicks: list[str], t: float) -> None:
        assert online is not None
        announce(clicks[-1], t)
        online.learn(session, clicks, t)

    online = engine.online
    learn = learn_history if online is not None else None
    out = walk(history, test, learn, answer, cutoffs, engine.limits.max_clicks,
               engine.model.index, progress)  # fmt: skip
    if online is not None:
        out["online"] = online.report()
    return out


def replay_baseline(
    baseline: Baseline,
    history: Sequence[Click],
    test: Sequence[Click],
    cutoffs: Sequence[int] = (20,),
    max_clicks: int = 200,
    progress: bool = False,
) -> dict:
    """walk() of an online_baselines recommender: each call learns its click, then answers."""

    def answer(session: str, clicks: list[str], t: float, k: int) -> list[str]:
        baseline.learn(session, clicks, t)
        return baseline.recommend(session, clicks, t, k)

    return walk(history, test, baseline.learn, answer, cutoffs, max_clicks, None, progress)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.tools.replay", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", help="export directory (not needed with --baseline)")
    parser.add_argument("--history", help="clicks before the test, learnt but not scored")
    parser.add_argument("--test", required=True, help="clicks to replay and score")
    parser.add_argument("--cutoffs", type=int, nargs="+", default=[20])
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--no-online", action="store_true", help="the frozen model alone")
    parser.add_argument("--no-model", action="store_true", help="the online layer alone")
    parser.add_argument("--exclude-clicked", action="store_true", help="as the request field")
    parser.add_argument(
        "--baseline", choices=sorted(BASELINES), help="replay this online baseline instead"
    )
    parser.add_argument("--scorer", choices=SCORERS, default=BlendConfig.scorer)
    parser.add_argument("--model-weight", type=float, default=BlendConfig.model_weight,
                        help="the mixture scorer's model share")  # fmt: skip
    parser.add_argument(
        "--half-life-s", type=float, default=OnlineConfig.half_life_s, help="online popularity"
    )
    parser.add_argument("--max-clicks", type=int, default=200)
    args = parser.parse_args(argv)
    if args.no_online and args.no_model:
        parser.error("--no-online and --no-model leave nothing to recommend with")
    if args.model is None and args.baseline is None:
        parser.error("--model is needed, unless --baseline is given")
    try:
        history = read_clicks(args.history) if args.history else []
        test = read_clicks(args.test)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.baseline is not None:
        figures = replay_baseline(BASELINES[args.baseline](), history, test, args.cutoffs,
                                  args.max_clicks, progress=True)  # fmt: skip
        figures["settings"] = {"baseline": args.baseline}
    else:
        figures = _replay_engine(args, history, test)
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


def _replay_engine(args: argparse.Namespace, history: list[Click], test: list[Click]) -> dict:
    blend = BlendConfig(model_weight=args.model_weight, scorer=args.scorer)
    engine = build_engine(
        args.model,
        online=not args.no_online,
        use_model=not args.no_model,
        blend=blend,
        online_config=online_config_for(blend, half_life_s=args.half_life_s),
        max_clicks=args.max_clicks,
        announce=log_items(history, test),
    )
    figures = replay(engine, history, test, args.cutoffs, args.exclude_clicked, progress=True)
    figures["settings"] = {
        "model": str(args.model),
        "online": not args.no_online,
        "use_model": not args.no_model,
        "exclude_clicked": args.exclude_clicked,
        "scorer": args.scorer,
        "model_weight": args.model_weight,
        "half_life_s": args.half_life_s,
    }
    return figures


if __name__ == "__main__":
    sys.exit(main())
