"""Prometheus metrics of one server, on their own registry (so tests can run several).

recsys_requests_total{method, code}          calls by gRPC method and status code
recsys_request_duration_seconds{method}      latency histogram, server side
recsys_stage_seconds_total{stage}            time spent per pipeline stage (where time goes)
recsys_batches_total, recsys_batch_size{size} model runs and their batch sizes
recsys_batch_queue_seconds_total / recsys_batch_run_seconds_total
recsys_batch_expired_total / recsys_overload_refusals_total
recsys_undecodable_requests_total{method}    requests that were not valid protobuf/UTF-8
recsys_session_cache_hits_total / _misses_total / _entries / _bytes
recsys_user_states                           users in this process's user store (HRNN); no ids
recsys_user_store_shared_users               users in the Redis user store (--user-store redis)
recsys_user_store_unavailable_total          user store operations Redis did not answer
recsys_prefix_clicks_skipped_total           cold-session clicks cut to meet a deadline
recsys_unknown_clicks_total                  request clicks the model does not know
recsys_popularity_fallbacks_total            answers from the popularity ranking
recsys_model_info{model_version, provider, n_items, ...}   the model being served
recsys_model_loaded                          1 while a model serves
recsys_model_reloads_total{result}           reload attempts: ok / failed
recsys_model_last_reload_ok / _timestamp_seconds
recsys_clickbus_connected / _published_total / _applied_total / _dropped_total /
  _duplicates_total / _lag_seconds           the click bus (clickbus.py); with --redis-url only
recsys_clicks_learnt_total                   clicks the online layer learnt from calls
recsys_clicks_not_learnt_total{reason}       and those it did not, by the guard's reason
                                             (guard.py: no_session, refused, unknown_item, ...)
recsys_catalogue_items{source}               items that may be recommended: model, announced
                                             (PutItems, --catalogue-file), open (on evidence)
recsys_online_weight{feature}                the online ranker's learnt weights (ranker.py)
recsys_online_source_hit_rate{source}        share of recent next clicks in a source's top 20
recsys_online_feedback_total / _updates_total  next clicks seen for an answer / that taught
recsys_online_size{what}                     the online layer's size: items, transitions,
                                             kept_answers, bytes (statistics and answers)
recsys_worker_shared_total{what}             a worker's link to the others (--workers > 1,
                                             workers/link.py): records sent, applied, dropped

With --workers N > 1 the pod's /metrics is the supervisor's (workers/supervisor.py): it
reads each worker's own endpoint (127.0.0.1, a private port) and sums the samples of every
counter and histogram; gauges combine by what they mean (GAUGE_COMBINE: sizes of per-worker
memory are summed, flags such as recsys_model_loaded take the minimum, copies such as the
catalogue the maximum, the online ranker's weights and hit rates the mean), and the
supervisor adds recsys_workers{state}, recsys_worker_exits_total and
recsys_worker_relay_dropped_total.

The hot path only adds to plain Python numbers (ServerStats); a collector turns them into
metric families when Prometheus scrapes, so a call pays no metric-library locks. The HTTP
endpoint answers /metrics and nothing else.
"""

from __future__ import annotations

import bisect
import statistics
import threading
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from .pipeline.batching import BatchStats
from .pipeline.user_store import UserStoreStats

if TYPE_CHECKING:
    from .learning.guard import LearnStats

# a batched call takes about a millisecond; a queue or a long cold session tens
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5)
# decode: request to Query; learn: the online layer takes the new clicks; session: cache
# look-up; model: waiting for and running the batch (batch_queue/batch_run split it);
# finish: online scores, blend, filters, cache update; respond: the message
STAGES = ("decode", "learn", "session", "model", "finish", "respond")


class Histogram:
    """Cumulative-bucket latency histogram as plain numbers."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        out, total = [], 0
        for bound, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            total += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
        return out


class BusStats:
    """What the click bus (clickbus.py) counts, read by the collector (plain numbers); it
    lives here, beside ServerStats, so that metrics imports nothing of the bus."""

    def __init__(self) -> None:
        self.connected = 0.0  # 1 while the last Redis call succeeded
        self.published = 0  # clicks written to the stream
        self.applied = 0  # other replicas' clicks learnt here
        self.dropped = 0  # clicks that never left: the pending deque was full
        self.duplicates = 0  # other replicas' clicks this replica had learnt already
        self.lag = Histogram()  # click time (the publisher's clock) to its learning here


class ServerStats:
    """Everything the server counts; updated from the event loop only."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = {}
        self.latency: dict[str, Histogram] = {}
        self.stage_seconds = dict.fromkeys(STAGES, 0.0)
        self.undecodable: dict[str, int] = {}
        self.cache_hits = self.cache_misses = 0
        self.unknown_clicks = self.fallbacks = self.skipped_clicks = 0
        self.batch = BatchStats()
        self.reloads = {"ok": 0, "failed": 0}
        self.last_reload_ok = 0.0
        self.last_reload_at = 0.0
        self.model_loaded = 0.0
        self.model_info: dict[str, str] = {}
        self.cache_entries: Callable[[], int] = lambda: 0
        self.cache_bytes: Callable[[], int] = lambda: 0
        self.user_entries: Callable[[], int] = lambda: 0  # users.py; never per user
        self.user_store = UserStoreStats()  # the Redis user store's (users.py)
        self.clickbus: BusStats | None = None  # the server sets it when the bus is on
        self.worker_link: BusStats | None = None  # one worker's link to the others
        self.learning: LearnStats | None = None  # the learning guard's counts (server)
        self.catalogue_sizes: Callable[[], dict[str, int]] = dict  # items by source
        # the online layer's report() (blend.OnlineLayer): the ranker's learnt weights and
        # sources' hit rates; the server sets it when the layer is on
        self.online_report: Callable[[], dict] = dict

    def record_call(self, method: str, code: str, seconds: float) -> None:
        key = (method, code)
        self.requests[key] = self.requests.get(key, 0) + 1
        hist = self.latency.get(method)
        if hist is None:
            hist = self.latency[method] = Histogram()
        hist.observe(seconds)

    def record_outcome(self, cache: str, n_unknown: int, fallback: bool, skipped: int) -> None:
        if cache == "hit":
            self.cache_hits += 1
        elif cache == "miss":
            self.cache_misses += 1
        self.unknown_clicks += n_unknown
        self.fallbacks += fallback
        self.skipped_clicks += skipped


# plain counters: (metric name, help, how to read it from the stats)
_COUNTERS: tuple[tuple[str, str, Callable[[ServerStats], float]], ...] = (
    ("recsys_batches", "Model runs", lambda s: s.batch.batches),
    ("recsys_batched_calls", "Calls answered by model runs", lambda s: s.batch.calls),
    ("recsys_batch_queue_seconds", "Seconds calls waited for their model run",
     lambda s: s.batch.queue_seconds),
    ("recsys_batch_run_seconds", "Seconds of model runs", lambda s: s.batch.run_seconds),
    ("recsys_batch_expired", "Queued calls not run: deadline passed or caller gone",
     lambda s: s.batch.expired),
    ("recsys_overload_refusals", "Calls refused: the model queue was full",
     lambda s: s.batch.refused),
    ("recsys_session_cache_hits", "Calls that resumed a cached session state",
     lambda s: s.cache_hits),
    ("recsys_session_cache_misses",
     "Calls with a session id whose state had to be computed from all clicks",
     lambda s: s.cache_misses),
    ("recsys_prefix_clicks_skipped",
     "Older clicks of cold sessions left out to meet the call's deadline",
     lambda s: s.skipped_clicks),
    ("recsys_unknown_clicks", "Request clicks on items the model does not know",
     lambda s: s.unknown_clicks),
    ("recsys_popularity_fallbacks", "Answers from the popularity ranking (no known click)",
     lambda s: s.fallbacks),
    ("recsys_user_store_unavailable",
     "User store operations Redis did not answer (the call went on as for a new user)",
     lambda s: s.user_store.unavailable),
)  # fmt: skip
_GAUGES: tuple[tuple[str, str, Callable[[ServerStats], float]], ...] = (
    ("recsys_session_cache_entries", "Sessions in the state cache",
     lambda s: s.cache_entries()),
    ("recsys_session_cache_bytes", "Bytes the state cache holds (estimate)",
     lambda s: s.cache_bytes()),
    ("recsys_user_states", "Users whose state the store holds (models with a user graph)",
     lambda s: s.user_entries()),
    ("recsys_user_store_shared_users",
     "Users whose state the Redis user store holds, every replica's (--user-store redis)",
     lambda s: s.user_store.shared_users()),
    ("recsys_model_loaded", "1 while a model is loaded and serving", lambda s: s.model_loaded),
    ("recsys_model_last_reload_ok", "1 if the last load attempt succeeded",
     lambda s: s.last_reload_ok),
    ("recsys_model_last_reload_timestamp_seconds", "Unix time of the last load attempt",
     lambda s: s.last_reload_at),
)  # fmt: skip


class _Collector(Collector):
    def __init__(self, stats: ServerStats):
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        yield _counter(
            "recsys_requests",
            "gRPC calls by method and status code",
            ["method", "code"],
            s.requests.items(),
        )
        latency = HistogramMetricFamily(
            "recsys_request_duration_seconds", "Seconds to answer a call", labels=["method"]
        )
        for method, hist in sorted(s.latency.items()):
            latency.add_metric([method], hist.cumulative(), hist.sum)
        yield latency
        stages = [((k,), v) for k, v in s.stage_seconds.items()]
        yield _counter("recsys_stage_seconds", "Seconds spent in each pipeline stage", ["stage"],
                       stages)  # fmt: skip
        sizes = [((str(k),), v) for k, v in sorted(s.batch.batch_sizes.items())]
        yield _counter("recsys_batch_size", "Model runs by batch size", ["size"], sizes)
        undecodable = [((m,), n) for m, n in s.undecodable.items()]
        yield _counter("recsys_undecodable_requests", "Requests that could not be decoded",
                       ["method"], undecodable)  # fmt: skip
        for name, text, read in _COUNTERS:
            yield _counter(name, text, [], [((), read(s))])
        for name, text, read in _GAUGES:
            yield GaugeMetricFamily(name, text, value=float(read(s)))
        info = InfoMetricFamily("recsys_model", "The model being served")
        if s.model_info:
            info.add_metric([], s.model_info)
        yield info
        reloads = [((k,), v) for k, v in s.reloads.items()]
        yield _counter("recsys_model_reloads", "Model load attempts by result", ["result"],
                       reloads)  # fmt: skip
        if s.clickbus is not None:
            yield from _clickbus(s.clickbus)
        if s.worker_link is not None:
            link = s.worker_link
            shared = [
                (("sent",), link.published),
                (("applied",), link.applied),
                (("duplicate",), link.duplicates),
                (("dropped",), link.dropped),
            ]
            yield _counter("recsys_worker_shared", "Learning records this worker shared with "
                           "the others, and theirs it applied", ["what"], shared)  # fmt: skip
        if s.learning is not None:
            yield from _learning(s.learning)
        yield from _online(s.online_report())
        catalogue = GaugeMetricFamily(
            "recsys_catalogue_items", "Items that may be recommended, by source", labels=["source"]
        )
        for source, n in s.catalogue_sizes().items():
            catalogue.add_metric([source], float(n))
        yield catalogue


def _online(report: dict) -> Iterator[Metric]:
    """The online layer's size; the ranker's weights and the sources' running hit rates
    (ranker.py), when it runs."""
    if "size" in report:
        size = GaugeMetricFamily("recsys_online_size",
                                 "The online layer's tracked items, transitions and bytes",
                                 labels=["what"])  # fmt: skip
        for what, value in report["size"].items():
            size.add_metric([what], float(value))
        yield size
    if "weights" not in report:
        return
    weights = GaugeMetricFamily("recsys_online_weight",
                                "The online ranker's learnt weight of each feature",
                                labels=["feature"])  # fmt: skip
    for feature, value in report["weights"].items():
        weights.add_metric([feature], float(value))
    yield weights
    hits = GaugeMetricFamily("recsys_online_source_hit_rate",
                             "Share of recent next clicks each source had in its top 20",
                             labels=["source"])  # fmt: skip
    for source, value in report["hit_rate"].items():
        hits.add_metric([source], float(value))
    yield hits
    yield _counter("recsys_online_feedback", "Next clicks that followed a kept answer", [],
                   [((), report["feedback"])])  # fmt: skip
    yield _counter("recsys_online_updates", "Next clicks that moved the ranker's weights", [],
                   [((), report["updates"])])  # fmt: skip


def _learning(learning: LearnStats) -> Iterator[Metric]:
    yield _counter("recsys_clicks_learnt", "Request clicks the online layer learnt", [],
                   [((), learning.learnt)])  # fmt: skip
    reasons = [((reason,), n) for reason, n in learning.not_learnt.items()]
    yield _counter("recsys_clicks_not_learnt",
                   "Request clicks the online layer did not learn, by reason (guard.py)",
                   ["reason"], reasons)  # fmt: skip


def _clickbus(bus: BusStats) -> Iterator[Metric]:
    yield GaugeMetricFamily("recsys_clickbus_connected", "1 while the click bus reaches Redis",
                            value=bus.connected)  # fmt: skip
    for name, text, value in (
        ("published", "Learnt clicks written to the stream", bus.published),
        ("applied", "Other replicas' clicks learnt here", bus.applied),
        ("dropped", "Learnt clicks never published: the queue for Redis was full", bus.dropped),
        ("duplicates", "Other replicas' clicks skipped: learnt here already", bus.duplicates),
    ):
        yield _counter(f"recsys_clickbus_{name}", text, [], [((), value)])
    lag = HistogramMetricFamily(
        "recsys_clickbus_lag_seconds", "Seconds from a click to its learning on another replica"
    )
    lag.add_metric([], bus.lag.cumulative(), bus.lag.sum)
    yield lag


def _counter(
    name: str, text: str, labels: list[str], values: Iterable[tuple[tuple[str, ...], float]]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, text, labels=labels)
    for label_values, value in values:
        family.add_metric(list(label_values), float(value))
    return family


# how the workers' values of a gauge make the pod's (others: summed, as per-worker memory)
GAUGE_COMBINE: dict[str, Callable[[list[float]], float]] = {
    "recsys_model_loaded": min,  # 1 only while every worker serves
    "recsys_model_last_reload_ok": min,
    "recsys_clickbus_connected": min,
    "recsys_model_last_reload_timestamp_seconds": max,
    "recsys_model_info": max,  # 1 per model version some worker serves
    "recsys_catalogue_items": max,  # every worker holds a copy
    "recsys_online_size": max,  # so do the online statistics (shared between workers)
    "recsys_user_store_shared_users": max,  # one Redis, counted by every worker
    "recsys_online_weight": statistics.fmean,  # each worker's ranker learns its own
    "recsys_online_source_hit_rate": statistics.fmean,
}


def sum_expositions(texts: Iterable[str]) -> list[Metric]:
    """The metric families of several workers' /metrics texts as one pod's: every sample
    (name and labels) of a counter or histogram summed over the workers that have it, of a
    gauge combined by GAUGE_COMBINE (default: summed)."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], list[float]]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            samples = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                samples.setdefault(key, []).append(sample.value)
    out = []
    for name, family in families.items():
        combine = GAUGE_COMBINE.get(name, sum) if family.type in ("gauge", "info") else sum
        for (sample_name, labels), found in values[name].items():
            family.add_sample(sample_name, dict(labels), float(combine(found)))
        out.append(family)
    return out


class _QuietHandler(WSGIRequestHandler):
    # a connection that sends half a request, or nothing, is dropped after this many seconds
    # rather than holding its thread
    timeout = 5.0

    def log_message(self, format: str, *args: object) -> None:  # scrapes are not news
        pass


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    """One thread per connection: a slow or idle scraper cannot hold up the next."""

    daemon_threads = True


class MetricsEndpoint:
    """GET /metrics over HTTP in a daemon thread; every other path is 404. What it serves:
    a server's stats, or any collector (the supervisor's sum of its workers)."""

    def __init__(self, stats: ServerStats | None = None, collector: Collector | None = None):
        self.registry = CollectorRegistry()
        self.registry.register(collector or _Collector(stats or ServerStats()))
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def serve(self, host: str, port: int) -> int:
        """Start listening; returns the bound port."""
        bound = self.bind(host, port)
        self.start()
        return bound

    def bind(self, host: str, port: int) -> int:
        """Listen without answering yet (start() does): a supervisor binds before it forks
        its workers, which then close the socket. Returns the bound port; raises OSError."""
        metrics_app = make_wsgi_app(self.registry)

        def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
            if environ.get("PATH_INFO") != "/metrics":
                start_response("404 Not Found", [("Content-Type", "text/plain")])
                return [b"only /metrics is served here\n"]
            return metrics_app(environ, start_response)

        self._server = make_server(
            host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler
        )
        return int(self._server.server_address[1])

    def fileno(self) -> int:
        """The listening socket's descriptor (-1 before bind())."""
        return -1 if self._server is None else self._server.fileno()

    def start(self) -> None:
        """Answer scrapes, in a daemon thread."""
        assert self._server is not None, "bind() first"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        if self._server is not None:
            if self._thread is not None:
                self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._server = None
