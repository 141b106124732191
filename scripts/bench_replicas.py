"""What splitting the click stream over replicas costs the online layer, and what sharing the
clicks through the click bus (service/clickbus.py) wins back.

    python -m training generate --out data/churn --churn
    python -m training train --train data/churn/train.tsv --out runs/churn \\
        --param n_epochs=3 --param layers=64
    python -m training export --model runs/churn --out runs/churn-export
    .venv/bin/python scripts/bench_replicas.py --model runs/churn-export \\
        --events data/churn/events.tsv                    # about 50 s on 2 cores
    .venv/bin/python scripts/bench_replicas.py ... --redis-url redis://127.0.0.1:6379/0
        # also: the cost of publishing on the request path and the delay to another replica

The replay is service.tools.replay's (read_clicks, build_engine, replay): the history is learnt,
then every test click is one call, scored against the session's next click. Clicks on items
the model never saw count, so the log is events.tsv, not test.tsv (which drops them). The
sessions that start in the first --test-hours of the last --test-days are the test; those
that start in the --history-days before are the history (4 days by default: older clicks
weigh < 2^-8 with the 12 h transition half-life, and all 13 days of the churn data give the
same figures to three decimals in twice the time). Each call goes to one of the replicas,
as a load balancer routes it, and each replica has an OnlineLayer of its own:

    one          one replica sees every call
    round-robin  --replicas replicas, call i to replica i mod N (per-call balancing, gRPC's
                 round_robin policy: no affinity)
    affinity     --replicas replicas, a session always to the same one (a hash of its id)
    shared       round-robin, and every click a replica learns reaches the others through
                 clickbus.LocalBus (the Redis bus's message format, in process) --bus-delay-s
                 of replay time later
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
import timeit
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.clickbus import BusConfig, ClickBus, LocalBus  # noqa: E402
from service.learning.online import OnlineModel  # noqa: E402
from service.pipeline.blend import BlendConfig, OnlineLayer  # noqa: E402
from service.pipeline.decode import Query  # noqa: E402
from service.pipeline.recommender import Recommender, Result  # noqa: E402
from service.proto import recommender_pb2 as pb  # noqa: E402
from service.tools.replay import Click, build_engine, read_clicks, replay  # noqa: E402

DAY = 86_400.0
Route = Callable[[int, str], int]  # (call number, session id) -> replica


class Replicas:
    """Several engines behind one load balancer, with the face replay() expects of one:
    every call, a history click learnt or a test click answered, goes to route's pick."""

    def __init__(self, engines: Sequence[Recommender], route: Route):
        self.engines = engines
        self.route = route
        self.calls = 0
        self.limits = engines[0].limits
        self.model = engines[0].model  # the same export everywhere: decode and unknown targets
        self.online = self  # replay() feeds the history through engine.online.learn

    def _next(self, session_id: str) -> Recommender:
        engine = self.engines[self.route(self.calls, session_id)]
        self.calls += 1
        return engine

    def learn(self, session_id: str, clicks: list[str], now: float) -> int:
        online = self._next(session_id).online
        return online.learn(session_id, clicks, now) if online is not None else 0

    def decode(self, request: pb.RecommendRequest) -> Query:
        return self.engines[0].decode(request)

    def recommend_now(self, query: Query, now: float | None = None) -> Result:
        return self._next(query.session_id).recommend_now(query, now)


def split(clicks: Sequence[Click], test_days: float, test_hours: float, history_days: float):
    """(history, test): the clicks of sessions that start in the history_days before the last
    test_days, and of those that start in the first test_hours after that, in time order."""
    starts: dict[str, float] = {}
    for click in clicks:
        starts.setdefault(click.session, click.time)
    cutoff = clicks[-1].time - test_days * DAY
    end = cutoff + test_hours * 3600
    history = [c for c in clicks if cutoff - history_days * DAY <= starts[c.session] < cutoff]
    test = [c for c in clicks if cutoff <= starts[c.session] < end]
    return history, test


def run_variant(args: argparse.Namespace, n: int, route: Route, shared: bool, history, test):
    engines = [build_engine(args.model, use_model=not args.no_model) for _ in range(n)]
    if shared:
        bus = LocalBus(delay_s=args.bus_delay_s)
        for i, engine in enumerate(engines):
            assert engine.online is not None
            bus.join(engine.online, f"replica-{i}")
    replicas = Replicas(engines, route)
    # replay() takes one Recommender; Replicas has the parts of one that it uses
    return replay(cast(Recommender, replicas), history, test, (20,))


def compare(args: argparse.Namespace, clicks: Sequence[Click]) -> dict[str, Any]:
    history, test = split(clicks, args.test_days, args.test_hours, args.history_days)
    n = args.replicas
    variants: dict[str, tuple[int, Route, bool]] = {
        "one replica": (1, lambda i, s: 0, False),
        f"{n} replicas, round-robin": (n, lambda i, s: i % n, False),
        f"{n} replicas, session affinity": (n, lambda i, s: zlib.crc32(s.encode()) % n, False),
        f"{n} replicas, round-robin, shared clicks": (n, lambda i, s: i % n, True),
    }
    sessions = len({c.session for c in test})
    print(f"history {len(history):,} clicks ({args.history_days:g} d); test {len(test):,} "
          f"clicks in {sessions:,} sessions (first {args.test_hours:g} h of the last "
          f"{args.test_days:g} d); "
          f"{'online layer alone' if args.no_model else 'model + online blend'}")  # fmt: skip
    print(f"{'':44} {'Recall@20':>9} {'MRR@20':>8} {'vs one':>16} {'s':>5}")
    out: dict[str, Any] = {}
    for name, (replicas, route, shared) in variants.items():
        figures = run_variant(args, replicas, route, shared, history, test)
        out[name] = figures
        one = out["one replica"]
        rel = [figures[k] / one[k] - 1 if one[k] else 0.0 for k in ("recall@20", "mrr@20")]
        vs = "" if name == "one replica" else f"{rel[0]:+.1%} / {rel[1]:+.1%}"
        print(f"{name:44} {figures['recall@20']:9.4f} {figures['mrr@20']:8.4f} {vs:>16} "
              f"{figures['seconds']:5.1f}", flush=True)  # fmt: skip
    return out


# --- the Redis bus: what publishing costs a call, how soon another replica learns it ---


def publish_cost(clicks: Sequence[Click], repeats: int = 5) -> dict[str, float]:
    """Microseconds per learnt click of OnlineLayer.learn with and without the bus's publish
    hook (best of `repeats` over the same clicks), and of ClickBus.publish alone; the bus is
    never started, so this is the request path alone."""
    n = 100_000
    bus = ClickBus(OnlineLayer(OnlineModel(), BlendConfig()), "redis://unused",
                   BusConfig(max_pending=n * repeats + 1))  # fmt: skip
    history = [c.item for c in clicks[:10]]
    alone = min(timeit.repeat(lambda: bus.publish("s", history, 0.0), number=n, repeat=repeats))
    best: dict[str, float] = {"publish_alone_us": alone / n * 1e6}
    for hooked in (False, True) * repeats:
        layer = OnlineLayer(OnlineModel(), BlendConfig())
        if hooked:
            # the writer keeps the queue short; a small bound does so here (and drops)
            ClickBus(layer, "redis://unused", BusConfig(max_pending=64))
        sessions: dict[str, list[str]] = {}
        started = time.perf_counter()
        for click in clicks:
            history = sessions.setdefault(click.session, [])
            history.append(click.item)
            layer.learn(click.session, history, click.time)
        per_click = (time.perf_counter() - started) / len(clicks) * 1e6
        key = "learn_with_publish_us" if hooked else "learn_us"
        best[key] = min(best.get(key, float("inf")), per_click)
    best["publish_us"] = best["learn_with_publish_us"] - best["learn_us"]
    return best


async def delivery_delay(url: str, n: int = 300) -> dict[str, float]:
    """Milliseconds from A learning a click to B having learnt it, one click at a time at
    random moments of A's flush cycle, over Redis at `url`."""
    config = BusConfig(stream=f"bench:clicks:{random.getrandbits(32):08x}")
    a_layer, b_layer = (OnlineLayer(OnlineModel(), BlendConfig()) for _ in range(2))
    a, b = ClickBus(a_layer, url, config), ClickBus(b_layer, url, config)
    await a.start()
    await b.start()
    delays = []
    try:
        while not (a.stats.connected and b.stats.connected):
            a_layer.learn("warm-up", ["w"], time.time())
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)
        for i in range(n):
            await asyncio.sleep(random.uniform(0, 2 * config.flush_ms / 1000))
            applied = b.stats.applied
            started = time.perf_counter()
            a_layer.learn(f"s{i}", ["x", f"i{i}"], time.time())
            while b.stats.applied == applied:
                await asyncio.sleep(0)
            delays.append((time.perf_counter() - started) * 1000)
    finally:
        await a.stop()
        await b.stop()
        # the stream is the benchmark's own; leave the Redis as it was
        from redis.asyncio import Redis

        client = Redis.from_url(url)
        await client.delete(config.stream)
        await client.aclose()
    q = statistics.quantiles(delays, n=100, method="inclusive")
    return {"p50_ms": q[49], "p90_ms": q[89], "p99_ms": q[98], "max_ms": max(delays)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="export directory")
    parser.add_argument("--events", required=True, help="the whole click log (events.tsv)")
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--test-days", type=float, default=1.0)
    parser.add_argument("--test-hours", type=float, default=24.0, help="of the test day(s)")
    # older clicks weigh < 2^-8 with the default 12 h transition half-life
    parser.add_argument("--history-days", type=float, default=4.0, help="before the test")
    parser.add_argument("--bus-delay-s", type=float, default=0.01, help="shared: replay time")
    parser.add_argument("--no-model", action="store_true", help="the online layer alone")
    parser.add_argument("--redis-url", help="also measure the Redis bus's costs there")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--results", help="also write docs/results/NAME.json (docs/online.md)")
    args = parser.parse_args(argv)
    clicks = read_clicks(args.events)
    out: dict[str, Any] = {"variants": compare(args, clicks)}
    if args.redis_url:
        cost = publish_cost(clicks[:50_000])
        print(
            "request path, per learnt click: learn {learn_us:.2f} us, with publish "
            "{learn_with_publish_us:.2f} us: +{publish_us:.2f} us (publish alone "
            "{publish_alone_us:.2f} us)".format(**cost)
        )
        delay = asyncio.run(delivery_delay(args.redis_url))
        print(
            "learnt on one replica -> learnt on another: p50 {p50_ms:.1f} ms, p90 "
            "{p90_ms:.1f} ms, p99 {p99_ms:.1f} ms, max {max_ms:.1f} ms".format(**delay)
        )
        out.update(publish=cost, delivery=delay)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    if args.results:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from provenance import write_results

        settings = {k: str(v) for k, v in vars(args).items() if k not in ("json", "results")}
        write_results(args.results, {"settings": settings, **out})
    return 0


if __name__ == "__main__":
    sys.exit(main())
