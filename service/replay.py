"""Replay a click log through the service's own recommendation code, in time order.

    python -m service.replay --model EXPORT_DIR --history HISTORY --test TEST \\
        --cutoffs 20 --json FILE [--no-online] [--no-model] [--exclude-clicked]

No gRPC, the same pipeline (recommender.Recommender, with the online layer the server
would have): first every HISTORY click is fed in time order (the online layer learns;
nothing is scored, the model is not run); then the TEST clicks are walked in time order
across all sessions. Each click is one call, as the frontend would make it: the session's
clicks so far (the most recent --max-clicks), at the click's own time. The call's answer is
the prediction for the session's next click, scored when that click comes; then the next
click's call teaches the online layer. Every next click counts, including clicks on items
the model has never seen (counted as misses when nothing ranks them), so the figures are
what the service would have achieved on that traffic, unlike GRU4Rec's usual protocol,
which drops such clicks.

JSON keys: recall@K and mrr@K for each cutoff, n_predictions, unknown_target_share (targets
the model's vocabulary lacks: what a frozen model could never get), seconds, settings.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .blend import BlendConfig, OnlineLayer, online_config_for
from .decode import Limits
from .online import OnlineConfig, OnlineModel
from .proto import recommender_pb2 as pb
from .recommender import Recommender
from .runtime import ExportedModel
from .sessions import SessionCache


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
) -> Recommender:
    """The recommender the server would build for this export (CPU, default settings)."""
    model = ExportedModel.load(export_dir, "cpu", threads=1)
    layer = None
    if online:
        blend = blend or BlendConfig()
        layer = OnlineLayer(OnlineModel(online_config or online_config_for(blend)), blend)
    cache = SessionCache(1_000_000, 10 * 86_400.0)  # replay time is not the wall clock
    return Recommender(model, cache, Limits(max_clicks=max_clicks), online=layer,
                       use_model=use_model)  # fmt: skip


def replay(
    engine: Recommender,
    history: Sequence[Click],
    test: Sequence[Click],
    cutoffs: Sequence[int] = (20,),
    exclude_clicked: bool = False,
    progress: bool = False,
) -> dict:
    """Progressive validation over `test` after learning `history`; see the module doc."""
    started = time.perf_counter()
    max_clicks = engine.limits.max_clicks
    sessions: dict[str, list[str]] = defaultdict(list)
    if engine.online is not None:
        for click in history:
            clicks = sessions[click.session]
            clicks.append(click.item)
            engine.online.learn(click.session, clicks[-max_clicks:], click.time)
    sessions.clear()
    k = max(cutoffs)
    pending: dict[str, list[str]] = {}  # session -> its last answer, awaiting the next click
    ranks: list[float] = []
    unknown_targets = 0
    for n, click in enumerate(test):
        clicks = sessions[click.session]
        answer = pending.pop(click.session, None)
        if answer is not None:  # this click is the target of the session's previous call
            ranks.append(answer.index(click.item) + 1 if click.item in answer else np.inf)
            unknown_targets += click.item not in engine.model.index
        clicks.append(click.item)
        request = pb.RecommendRequest(
            session_id=click.session,
            clicks=clicks[-max_clicks:],
            top_k=k,
            exclude_clicked=exclude_clicked,
        )
        result = engine.recommend_now(engine.decode(request), now=click.time)
        pending[click.session] = result.item_ids
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
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.replay", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", required=True, help="export directory")
    parser.add_argument("--history", help="clicks before the test, learnt but not scored")
    parser.add_argument("--test", required=True, help="clicks to replay and score")
    parser.add_argument("--cutoffs", type=int, nargs="+", default=[20])
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--no-online", action="store_true", help="the frozen model alone")
    parser.add_argument("--no-model", action="store_true", help="the online layer alone")
    parser.add_argument("--exclude-clicked", action="store_true", help="as the request field")
    parser.add_argument("--model-weight", type=float, default=BlendConfig.model_weight)
    parser.add_argument(
        "--half-life-s", type=float, default=OnlineConfig.half_life_s, help="online popularity"
    )
    parser.add_argument("--max-clicks", type=int, default=200)
    args = parser.parse_args(argv)
    if args.no_online and args.no_model:
        parser.error("--no-online and --no-model leave nothing to recommend with")
    try:
        history = read_clicks(args.history) if args.history else []
        test = read_clicks(args.test)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    half_life = args.half_life_s
    blend = BlendConfig(model_weight=args.model_weight)
    engine = build_engine(
        args.model,
        online=not args.no_online,
        use_model=not args.no_model,
        blend=blend,
        online_config=online_config_for(blend, half_life_s=half_life),
        max_clicks=args.max_clicks,
    )
    figures = replay(engine, history, test, args.cutoffs, args.exclude_clicked, progress=True)
    figures["settings"] = {
        "model": str(args.model),
        "online": not args.no_online,
        "use_model": not args.no_model,
        "exclude_clicked": args.exclude_clicked,
        "model_weight": args.model_weight,
        "half_life_s": half_life,
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
