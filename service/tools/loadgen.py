"""Bounded load generator for recsys.v1.Recommender: closed or open loop, replayed or
synthetic sessions, failover between targets, a report with a per-second timeline.

    python -m service.tools.loadgen --target 127.0.0.1:50051 --sessions data/demo/test.tsv \\
        --concurrency 32 --calls 20000 --duration-s 30
    python -m service.tools.loadgen --target A:50051 --target B:50051 \\
        --items-file export/items.txt \\
        --rate 500 --arrivals poisson --max-in-flight 200 --duration-s 60 --json

Closed loop (default): `--concurrency` callers, each sending its next call when the previous
one returned. Open loop (`--rate R`): R calls/s on a schedule (Poisson or evenly spaced)
that answers do not slow down; a call due while `--max-in-flight` are outstanding is not
sent and counts as dropped, one sent more than 5 ms behind schedule counts as late.
Every run ends at `--calls` calls (open loop: arrivals) or `--duration-s`, whichever comes
first; calls in flight then get their deadline to finish.

Sessions are replayed click by click as a shop frontend would send them: each call carries
the session id and its clicks so far (the most recent `--max-clicks`). `--cold` sends each
session's first `--cold-clicks` clicks at once under a fresh id instead, which measures the
cost of a session the server has not seen. A call that fails UNAVAILABLE (dead server,
refused connection) is sent once more to each further target in the caller's order and
counts as retried; it is lost when no target answered. Latency is measured on the client
from send to answer (retries included), so on a shared machine it includes client work.
Exit status 0 when no call failed.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import itertools
import json
import secrets
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from ..proto import recommender_pb2 as pb

METHOD = f"/{pb.DESCRIPTOR.services_by_name['Recommender'].full_name}/Recommend"
LATE_S = 0.005  # asyncio timers wake up to ~1 ms late on their own; more is the client lagging
SESSION_BLOCK = 4096  # synthetic sessions drawn per numpy call
CONNECT_WAIT_S = 1.0  # how long the start waits for channels to connect (dead ones never do)

# A stub call: (serialized request, timeout in seconds) -> serialized response
Stub = Callable[..., Awaitable[bytes]]


@dataclass(frozen=True)
class Tls:
    """Files for TLS (`ca`: the server's CA, None = system roots) and, for mutual TLS, the
    client's certificate and key; `server_name` overrides the name checked in the server's
    certificate."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: Path | None) -> bytes | None:
            return path.read_bytes() if path is not None else None

        return grpc.ssl_channel_credentials(read(self.ca), read(self.key), read(self.cert))


@dataclass(frozen=True)
class LoadSpec:
    """One run. Sessions come from `sessions_file` (a click log) or, synthetic, from
    `item_ids`; exactly one must be given."""

    targets: tuple[str, ...]
    calls: int = 2000
    duration_s: float = 60.0
    concurrency: int = 4  # closed loop: callers; open loop: sessions replayed side by side
    rate: float = 0.0  # calls/s; 0 = closed loop
    arrivals: str = "poisson"  # open loop: "poisson" or "uniform" gaps
    max_in_flight: int = 1000  # open loop: bounds memory when the server falls behind
    sessions_file: Path | None = None
    passes: int = 1  # times the log is replayed (each pass under fresh session ids)
    item_ids: tuple[str, ...] = ()
    mean_length: float = 6.0  # synthetic sessions: 1 + geometric clicks
    max_clicks: int = 200  # the service's default limit: longer sessions send the latest
    top_k: int = 20
    exclude_clicked: bool = False
    cold: bool = False
    cold_clicks: int = 30
    channels: int = 1  # connections per target, like that many frontend instances
    spread_targets: bool = False  # callers take turns at which target they try first
    deadline_ms: float = 10_000.0  # per call, retry included
    tls: Tls | None = None
    session_prefix: str | None = None  # None: a fresh random one, so runs never share ids
    seed: int = 0

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be positive"
            for name in ("calls", "duration_s", "concurrency", "max_in_flight", "passes",
                         "max_clicks", "cold_clicks", "channels", "deadline_ms", "mean_length")
            if getattr(self, name) <= 0
        ]  # fmt: skip
        if not self.targets:
            problems.append("at least one target is needed")
        if self.rate < 0 or self.arrivals not in ("poisson", "uniform"):
            problems.append("rate must be >= 0 and arrivals poisson or uniform")
        if (self.sessions_file is None) == (not self.item_ids):
            problems.append("give either a sessions file or item ids")
        if self.tls is not None and (self.tls.cert is None) != (self.tls.key is None):
            problems.append("a client certificate needs its key, and the other way round")
        if problems:
            raise ValueError("invalid load spec: " + "; ".join(problems))


@dataclass
class LoadResult:
    """What happened, call by call: `sent_s[i]` seconds after the start call i was sent,
    `latency_s[i]` its latency (NaN when it failed)."""

    started: float  # time.perf_counter() at the start, to line up outside events
    seconds: float
    sent_s: np.ndarray  # (calls,)
    latency_s: np.ndarray  # (calls,)
    errors: dict[str, int] = field(default_factory=dict)  # failed calls by final status
    retried: int = 0
    lost: int = 0  # calls no target answered (also in errors, as UNAVAILABLE)
    late: int = 0
    dropped: int = 0

    @property
    def calls(self) -> int:
        return len(self.sent_s)

    @property
    def ok(self) -> bool:
        return not self.errors and not self.lost

    def summary(self) -> dict:
        """Counts, calls/s over all calls, and latency percentiles (ms) of successful ones."""
        good = self.latency_s[~np.isnan(self.latency_s)] * 1000.0
        pct = np.percentile(good, [50, 95, 99, 100]) if len(good) else np.full(4, np.nan)
        return {
            "calls": self.calls,
            "seconds": round(self.seconds, 3),
            "calls_per_s": round(self.calls / self.seconds, 1) if self.seconds else 0.0,
            **{
                f"{p}_ms": round(float(v), 3)
                for p, v in zip(("p50", "p95", "p99", "max"), pct, strict=True)
            },
            "errors": sum(self.errors.values()),
            "error_codes": dict(self.errors),
            "retried": self.retried,
            "lost": self.lost,
            "late": self.late,
            "dropped": self.dropped,
        }

    def timeline(self, window_s: float = 1.0) -> list[dict]:
        """Per window of send time: calls answered, calls failed, p99 ms of the answered."""
        windows = (self.sent_s // window_s).astype(np.int64)
        rows = []
        for w in range(int(windows.max()) + 1 if self.calls else 0):
            lat = self.latency_s[windows == w]
            good = lat[~np.isnan(lat)] * 1000.0
            p99 = round(float(np.percentile(good, 99)), 3) if len(good) else None
            rows.append({"t_s": w * window_s, "ok": len(good), "failed": len(lat) - len(good),
                         "p99_ms": p99})  # fmt: skip
        return rows


def read_items(path: str | Path) -> list[str]:
    """Item ids, one a line (an export's items.txt)."""
    return [line for line in Path(path).read_text(encoding="utf-8").split("\n") if line]


def read_sessions(path: str | Path) -> list[tuple[str, list[str]]]:
    """(session id, item ids by time) per session of a click log with SessionId, ItemId and
    Time columns (TSV, or CSV by suffix), sessions in the order of their first click."""
    path = Path(path)
    with path.open(encoding="utf-8", newline="") as f:
        rows = csv.DictReader(f, delimiter="," if path.suffix == ".csv" else "\t")
        missing = {"SessionId", "ItemId", "Time"} - set(rows.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        clicks: dict[str, list[tuple[float, str]]] = {}
        for row in rows:
            try:
                event = (float(row["Time"]), row["ItemId"])
            except (TypeError, ValueError):  # a short row, or a time that is not a number
                raise ValueError(f"{path}, line {rows.line_num}: bad row {row}") from None
            clicks.setdefault(row["SessionId"], []).append(event)
    # stable sorts: equal times keep file order
    by_time = {sid: sorted(events, key=lambda e: e[0]) for sid, events in clicks.items()}
    order = sorted(by_time, key=lambda sid: by_time[sid][0][0])
    return [(sid, [item for _, item in by_time[sid]]) for sid in order]


# Requests are built as bytes by concatenation: protobuf parses concatenated messages as one
# merged message (repeated fields append), so every click is encoded once and a session's
# growing click list costs one bytes join per call instead of a message build.
def _encoded(**fields: Any) -> bytes:
    return pb.RecommendRequest(**fields).SerializeToString()


def _sessions(spec: LoadSpec, prefix: str) -> Iterator[tuple[bytes, list[bytes]]]:
    """(encoded session id, encoded clicks) for every session of the run, in order (cold:
    its first cold_clicks clicks); endless when synthetic. Reads the log, or encodes the
    items, now: before the clock starts."""
    if spec.sessions_file is not None:
        return _replayed(spec, prefix, read_sessions(spec.sessions_file))
    return _synthetic(spec, prefix, [_encoded(clicks=[item]) for item in spec.item_ids])


def _replayed(spec: LoadSpec, prefix: str, log: list[tuple[str, list[str]]]) -> Iterator:
    keep = spec.cold_clicks if spec.cold else None
    known: dict[str, bytes] = {}
    for p in range(spec.passes):
        suffix = f"/{p}" if p else ""
        for sid, clicks in log:
            encoded = [known.get(c) or known.setdefault(c, _encoded(clicks=[c])) for c in clicks]
            yield _encoded(session_id=f"{prefix}{sid}{suffix}"), encoded[:keep]


def _synthetic(spec: LoadSpec, prefix: str, items: list[bytes]) -> Iterator:
    rng, n = np.random.default_rng(spec.seed), itertools.count()
    # drawn in blocks: a numpy call costs microseconds (integers(size=...) ~25 us), which per
    # session would be a tenth of the client's CPU per call
    while True:
        lengths = rng.geometric(1.0 / spec.mean_length, SESSION_BLOCK)
        if spec.cold:
            lengths[:] = spec.cold_clicks
        lengths = np.minimum(lengths, spec.max_clicks)
        picks = rng.integers(len(items), size=int(lengths.sum())).tolist()
        ends = np.cumsum(lengths).tolist()
        for start, end in zip([0, *ends[:-1]], ends, strict=True):
            yield _encoded(session_id=f"{prefix}s{next(n)}"), [items[i] for i in picks[start:end]]


class _Lane:
    """One stream of calls over the shared sessions: click by click (the most recent
    max_clicks), or, cold, one call per session. `next()` is None once they ran out."""

    def __init__(self, spec: LoadSpec, sessions: Iterator[tuple[bytes, list[bytes]]]):
        self.spec, self.sessions = spec, sessions
        self.tail = _encoded(top_k=spec.top_k, exclude_clicked=spec.exclude_clicked)
        self.head, self.clicks, self.at = b"", list[bytes](), 0

    def next(self) -> bytes | None:
        if self.at >= len(self.clicks):
            taken = next(self.sessions, None)
            if taken is None:
                return None
            self.head, self.clicks = taken
            self.at = len(self.clicks) - 1 if self.spec.cold else 0
        self.at += 1
        window = self.clicks[max(0, self.at - self.spec.max_clicks) : self.at]
        return self.head + b"".join(window) + self.tail


class _Tally:
    """Sends a call with failover and records its outcome."""

    def __init__(self, deadline_s: float):
        self.deadline_s = deadline_s
        self.started = time.perf_counter()
        self.sent: list[float] = []
        self.latency: list[float] = []
        self.errors: Counter[str] = Counter()
        self.retried = self.lost = self.late = self.dropped = 0

    async def call(self, route: Sequence[Stub], request: bytes) -> None:
        sent = time.perf_counter()
        deadline = sent + self.deadline_s
        code: grpc.StatusCode | None = grpc.StatusCode.DEADLINE_EXCEEDED
        for attempt, stub in enumerate(route):
            left = deadline - time.perf_counter()
            if left <= 0:
                code = grpc.StatusCode.DEADLINE_EXCEEDED
                break
            self.retried += attempt == 1
            try:
                await stub(request, timeout=left)
                code = None
                break
            except grpc.RpcError as err:
                code = err.code()
                if code is not grpc.StatusCode.UNAVAILABLE:
                    break
        self.sent.append(sent - self.started)
        if code is None:
            self.latency.append(time.perf_counter() - sent)
            return
        self.latency.append(float("nan"))
        self.errors[code.name] += 1
        self.lost += code is grpc.StatusCode.UNAVAILABLE

    def result(self) -> LoadResult:
        return LoadResult(
            started=self.started,
            seconds=time.perf_counter() - self.started,
            sent_s=np.asarray(self.sent),
            latency_s=np.asarray(self.latency),
            errors=dict(self.errors),
            retried=self.retried,
            lost=self.lost,
            late=self.late,
            dropped=self.dropped,
        )


def _channel(spec: LoadSpec, target: str) -> grpc.aio.Channel:
    # a local subchannel pool gives each channel its own connection; with the global pool,
    # channels to one target share one
    options: list[tuple[str, str | int]] = [("grpc.use_local_subchannel_pool", 1)]
    if spec.tls is None:
        return grpc.aio.insecure_channel(target, options=options)
    if spec.tls.server_name:
        options.append(("grpc.ssl_target_name_override", spec.tls.server_name))
    return grpc.aio.secure_channel(target, spec.tls.credentials(), options=options)


def _routes(spec: LoadSpec, stubs: list[list[Stub]]) -> list[list[Stub]]:
    """Per caller, the stubs to try in order: the targets as listed (or rotated by caller
    when spreading), each on the caller's channel."""
    n, routes = len(spec.targets), []
    for i in range(spec.concurrency):
        first, channel = (i % n, i // n % spec.channels) if spec.spread_targets else (0, i)
        routes.append([stubs[(first + t) % n][channel % spec.channels] for t in range(n)])
    return routes


async def _closed_loop(
    spec: LoadSpec, lanes: list[_Lane], routes: list[list[Stub]], tally: _Tally
) -> None:
    budget, stop_at = spec.calls, tally.started + spec.duration_s

    async def caller(i: int) -> None:
        nonlocal budget
        while budget > 0 and time.perf_counter() < stop_at:
            request = lanes[i].next()
            if request is None:
                return
            budget -= 1
            await tally.call(routes[i], request)

    await asyncio.gather(*(caller(i) for i in range(spec.concurrency)))


async def _open_loop(
    spec: LoadSpec, lanes: list[_Lane], routes: list[list[Stub]], tally: _Tally
) -> None:
    rng = np.random.default_rng([spec.seed, 1])
    due, stop_at = tally.started, tally.started + spec.duration_s
    in_flight: set[asyncio.Task] = set()
    for n in range(spec.calls):
        due += rng.exponential(1.0 / spec.rate) if spec.arrivals == "poisson" else 1 / spec.rate
        if due >= stop_at:
            break
        # sleep(0) when behind still lets answers in, so a backlog cannot starve them
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        if len(in_flight) >= spec.max_in_flight:
            tally.dropped += 1
            continue
        tally.late += time.perf_counter() - due > LATE_S
        lane = n % spec.concurrency
        request = lanes[lane].next()
        if request is None:
            break
        task = asyncio.create_task(tally.call(routes[lane], request))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    await asyncio.gather(*in_flight)


async def run_load_async(spec: LoadSpec) -> LoadResult:
    """Run `spec` in the running event loop; see run_load."""
    prefix = secrets.token_hex(3) + "-" if spec.session_prefix is None else spec.session_prefix
    sessions = _sessions(spec, prefix)
    lanes = [_Lane(spec, sessions) for _ in range(spec.concurrency)]
    channels = [[_channel(spec, t) for _ in range(spec.channels)] for t in spec.targets]
    try:
        every = [c for per_target in channels for c in per_target]
        ready = [asyncio.ensure_future(c.channel_ready()) for c in every]
        for waiting in (await asyncio.wait(ready, timeout=CONNECT_WAIT_S))[1]:
            waiting.cancel()  # a dead target: its calls will fail over
        # no (de)serializers: requests are bytes already, and nobody reads the answers
        stubs = [[c.unary_unary(METHOD) for c in per_target] for per_target in channels]
        tally = _Tally(spec.deadline_ms / 1000.0)
        loop = _open_loop if spec.rate > 0 else _closed_loop
        await loop(spec, lanes, _routes(spec, stubs), tally)
        return tally.result()
    finally:
        await asyncio.gather(*(c.close() for per_target in channels for c in per_target))


def run_load(spec: LoadSpec) -> LoadResult:
    """Run `spec` to its end (calls, duration, or the log running out) and return what
    happened. Raises ValueError for a bad spec (at LoadSpec()) or an unreadable log.

        result = run_load(LoadSpec(("127.0.0.1:50051",), item_ids=tuple(ids), calls=500))
        result.summary()["p99_ms"], result.timeline()
    """
    return asyncio.run(run_load_async(spec))


def describe(spec: LoadSpec, s: dict) -> str:
    """The one-line human report."""
    mode = (
        f"open loop {spec.rate:g}/s"
        if spec.rate
        else f"closed loop, concurrency {spec.concurrency}"
    )
    line = (
        f"{s['calls']} calls in {s['seconds']:.1f} s ({s['calls_per_s']:.0f} calls/s), {mode}: "
        f"p50 {s['p50_ms']:.2f} ms, p95 {s['p95_ms']:.2f}, p99 {s['p99_ms']:.2f}, max "
        f"{s['max_ms']:.2f}; errors {s['error_codes'] or 0}, retried {s['retried']}, lost "
        f"{s['lost']}"
    )
    return line + (f", late {s['late']}, dropped {s['dropped']}" if spec.rate else "")


# LoadSpec fields that are plain flags (--max-in-flight for max_in_flight), with their help
_FLAGS = {
    "calls": "stop after this many calls (open loop: arrivals)",
    "duration_s": "stop after this many seconds",
    "concurrency": "callers (open loop: sessions replayed side by side)",
    "rate": "open loop calls/s; 0 = closed loop",
    "arrivals": "open loop gaps: poisson or uniform",
    "max_in_flight": "open loop: calls outstanding at most; more are dropped",
    "passes": "times the click log is replayed",
    "mean_length": "synthetic sessions: mean clicks",
    "max_clicks": "most recent clicks a call carries",
    "top_k": "items asked for",
    "exclude_clicked": "ask to leave the session's clicks out",
    "cold": "each call a fresh session carrying --cold-clicks clicks",
    "cold_clicks": "clicks of a cold call",
    "channels": "connections per target",
    "spread_targets": "callers take turns at which target they try first",
    "deadline_ms": "per call, retry included",
    "seed": "synthetic sessions and Poisson arrivals",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m service.tools.loadgen", description=__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--target", action="append", help="host:port; repeat for failover targets")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--sessions", type=Path, help="click log (SessionId, ItemId, Time)")
    source.add_argument("--items-file", type=Path, help="synthetic sessions over these ids")
    defaults = {f.name: f.default for f in fields(LoadSpec)}
    for name, text in _FLAGS.items():
        flag, default = "--" + name.replace("_", "-"), defaults[name]
        if isinstance(default, bool):
            p.add_argument(flag, action="store_true", help=text)
        else:
            p.add_argument(flag, type=type(default), default=default, help=f"{text} [{default}]")
    p.add_argument("--tls-ca", type=Path, help="CA of the server certificate (turns TLS on)")
    p.add_argument("--tls-cert", type=Path, help="client certificate (mutual TLS)")
    p.add_argument("--tls-key", type=Path, help="client key (mutual TLS)")
    p.add_argument("--tls-server-name", help="name expected in the server certificate")
    p.add_argument("--session-prefix", help="session id prefix [random per run]")
    p.add_argument("--json", action="store_true", help="summary and timeline as JSON")
    return p


def spec_from_args(args: argparse.Namespace) -> LoadSpec:
    """The LoadSpec of parsed flags; raises ValueError (bad values) or OSError (files)."""
    tls = None
    if args.tls_ca or args.tls_cert or args.tls_key or args.tls_server_name:
        tls = Tls(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
    return LoadSpec(
        targets=tuple(args.target or ["127.0.0.1:50051"]),
        sessions_file=args.sessions,
        item_ids=tuple(read_items(args.items_file)) if args.items_file else (),
        tls=tls,
        session_prefix=args.session_prefix,
        **{name: getattr(args, name) for name in _FLAGS},
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        spec = spec_from_args(args)
        result = run_load(spec)
    except (ValueError, OSError) as err:
        parser.error(str(err))
    summary = result.summary()
    if args.json:
        print(json.dumps({**summary, "timeline": result.timeline()}))
    else:
        print(describe(spec, summary))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
