"""Prometheus metrics of one server, on their own registry (so tests can run several).

recsys_requests_total{method, code}          calls by gRPC method and status code
recsys_request_duration_seconds{method}      latency histogram, server side
recsys_requests_in_progress{method}          calls being answered now
recsys_session_cache_hits_total / _misses_total / recsys_session_cache_entries
recsys_unknown_clicks_total                  request clicks the model does not know
recsys_popularity_fallbacks_total            answers from the popularity ranking
recsys_model_info{model_version, provider, n_items, ...}   the model being served
recsys_model_loaded                          1 once the model serves, 0 before and after
"""

from __future__ import annotations

from collections.abc import Callable
from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    start_http_server,
)

# one GRU step at 40,000 items takes about half a millisecond on a CPU core; a long
# uncached session or a queue takes tens of milliseconds
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "recsys_requests",
            "gRPC calls by method and status code",
            ["method", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "recsys_request_duration_seconds",
            "Time to answer a call, in seconds",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_progress = Gauge(
            "recsys_requests_in_progress", "Calls being answered now", ["method"], registry=r
        )
        self.cache_hits = Counter(
            "recsys_session_cache_hits", "Calls that resumed a cached session state", registry=r
        )
        self.cache_misses = Counter(
            "recsys_session_cache_misses",
            "Calls with a session id whose state had to be computed from all clicks",
            registry=r,
        )
        self.cache_entries = Gauge(
            "recsys_session_cache_entries", "Sessions in the state cache", registry=r
        )
        self.unknown_clicks = Counter(
            "recsys_unknown_clicks", "Request clicks on items the model does not know", registry=r
        )
        self.fallbacks = Counter(
            "recsys_popularity_fallbacks",
            "Answers from the popularity ranking (no known click)",
            registry=r,
        )
        self.model_info = Info("recsys_model", "The model being served", registry=r)
        self.model_loaded = Gauge(
            "recsys_model_loaded", "1 while a model is loaded and serving", registry=r
        )
        self._http: tuple[WSGIServer, Thread] | None = None

    def track_cache_size(self, size: Callable[[], int]) -> None:
        self.cache_entries.set_function(lambda: float(size()))

    def record_outcome(self, cache: str, n_unknown: int, fallback: bool) -> None:
        if cache == "hit":
            self.cache_hits.inc()
        elif cache == "miss":
            self.cache_misses.inc()
        if n_unknown:
            self.unknown_clicks.inc(n_unknown)
        if fallback:
            self.fallbacks.inc()

    def serve(self, host: str, port: int) -> int:
        """Start the /metrics HTTP endpoint in a daemon thread; returns the bound port."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = (server, thread)
        return int(server.server_address[1])

    def close(self) -> None:
        if self._http is not None:
            server, thread = self._http
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
            self._http = None
