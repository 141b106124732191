"""The gRPC server: recsys.v1.Recommender, grpc.health.v1, reflection, Prometheus metrics.

    server = RecommendationServer(load_config(["--model", "runs/demo/export", "--port", "0"]))
    server.start()          # listening; health NOT_SERVING
    server.load_model()     # health SERVING
    ...
    server.stop(grace_s)    # NOT_SERVING, refuse new calls, let running ones finish

The servicer only translates messages: the work is in recommender.Recommender.
"""

from __future__ import annotations

import logging
import time
import uuid
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .config import ServiceConfig
from .metrics import Metrics
from .proto import recommender_pb2 as pb
from .proto import recommender_pb2_grpc as pb_grpc
from .recommender import (
    SOURCE_POPULARITY,
    InvalidRequest,
    Limits,
    NoKnownClicks,
    Recommender,
    Result,
)
from .runtime import ExportedModel
from .sessions import SessionCache

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Recommender"].full_name  # "recsys.v1.Recommender"
_SOURCES = {"model": pb.SOURCE_MODEL, SOURCE_POPULARITY: pb.SOURCE_POPULARITY}
_STATUS_OF = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    NoKnownClicks: grpc.StatusCode.NOT_FOUND,
}


class RecommenderServicer(pb_grpc.RecommenderServicer):
    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self.engine: Recommender | None = None  # set once the model is loaded

    def Recommend(self, request: pb.RecommendRequest, context: grpc.ServicerContext):
        def work(engine: Recommender) -> pb.RecommendResponse:
            result = engine.recommend(
                request.session_id,
                list(request.clicks),
                request.top_k,
                list(request.exclude_items),
                request.include_clicked,
                request.strict,
            )
            return pb.RecommendResponse(**self._common(result, engine))

        return self._answer("Recommend", context, work)

    def ScoreItems(self, request: pb.ScoreItemsRequest, context: grpc.ServicerContext):
        def work(engine: Recommender) -> pb.ScoreItemsResponse:
            result = engine.score_items(
                request.session_id, list(request.clicks), list(request.candidates), request.strict
            )
            return pb.ScoreItemsResponse(
                **self._common(result, engine), unknown_candidates=result.unknown_candidates
            )

        return self._answer("ScoreItems", context, work)

    def _common(self, result: Result, engine: Recommender) -> dict:
        self.metrics.record_outcome(
            result.cache, len(result.unknown_clicks), result.source == SOURCE_POPULARITY
        )
        pairs = zip(result.item_ids, result.scores, strict=True)
        items = [pb.ScoredItem(item_id=i, score=s) for i, s in pairs]
        return dict(
            recommendation_id=str(uuid.uuid4()),
            items=items,
            model_version=engine.model.model_version,
            unknown_clicks=result.unknown_clicks,
            source=_SOURCES[result.source],
        )

    def _answer(self, method: str, context: grpc.ServicerContext, work):
        """Run `work`, turning every failure into a status code: nothing a request does may
        take the process down."""
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        message = ""
        response = None
        with self.metrics.in_progress.labels(method).track_inprogress():
            engine = self.engine
            try:
                if engine is None:
                    code, message = grpc.StatusCode.UNAVAILABLE, "model is loading; retry shortly"
                else:
                    response = work(engine)
            except (InvalidRequest, NoKnownClicks) as err:
                code, message = _STATUS_OF[type(err)], str(err)
            except Exception:  # a bug, not the caller's fault: log it, keep serving
                log.exception("%s failed", method)
                code, message = grpc.StatusCode.INTERNAL, "internal error; see the server log"
        self.metrics.requests.labels(method, code.name).inc()
        self.metrics.latency.labels(method).observe(time.perf_counter() - started)
        if code is not grpc.StatusCode.OK:
            context.abort(code, message)
        return response


class RecommendationServer:
    """One process's gRPC and metrics servers around a servicer."""

    def __init__(self, config: ServiceConfig):
        self.config = config
        self.metrics = Metrics()
        self.servicer = RecommenderServicer(self.metrics)
        self.health = health.HealthServicer()
        self.port = 0
        self.metrics_port = 0
        self._server: grpc.Server | None = None

    def start(self) -> None:
        """Listen on config.host:port (health NOT_SERVING) and start the metrics endpoint."""
        cfg = self.config
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="rpc"),
            # beyond this many queued calls, refuse (RESOURCE_EXHAUSTED) instead of piling up
            maximum_concurrent_rpcs=4 * cfg.workers,
        )
        pb_grpc.add_RecommenderServicer_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        address = _join(cfg.host, cfg.port)
        self.port = server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot listen on {address}; is the port in use?")
        server.start()
        self._server = server
        self.metrics_port = self.metrics.serve(cfg.host, cfg.metrics_port)
        log.info("gRPC on %s, metrics on port %d", _join(cfg.host, self.port), self.metrics_port)

    def load_model(self) -> None:
        """Load the export directory and start serving; raises runtime.ModelLoadError."""
        cfg = self.config
        model = ExportedModel.load(cfg.model_dir, cfg.device, cfg.ort_threads)
        cache = SessionCache(cfg.cache_size, cfg.cache_ttl_s)
        self.metrics.track_cache_size(cache.__len__)
        self.metrics.model_info.info(
            {
                "model_version": model.model_version,
                "provider": model.provider,
                "n_items": str(model.n_items),
                "state_size": str(model.state_size),
            }
        )
        self.servicer.engine = Recommender(model, cache, Limits(max_clicks=cfg.max_clicks))
        self.metrics.model_loaded.set(1)
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving model %s", model.model_version)

    def stop(self, grace_s: float | None = None) -> None:
        """NOT_SERVING, refuse new calls, give running ones grace_s seconds (None: config's)."""
        grace = self.config.grace_s if grace_s is None else grace_s
        self.metrics.model_loaded.set(0)
        self.health.enter_graceful_shutdown()  # NOT_SERVING for every service, and it sticks
        if self._server is not None:
            log.info("shutting down: in-flight calls get up to %.1f s", grace)
            self._server.stop(grace).wait()
            self._server = None
        self.metrics.close()
        log.info("stopped")


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
