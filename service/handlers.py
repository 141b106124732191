"""The Recommender's gRPC methods: translate messages around recommender.Recommender.

    handlers = Handlers(ServerStats())
    server.add_generic_rpc_handlers((handlers.generic_handler(),))
    handlers.engine = Recommender(...)      # swapped by the server on a model reload

Each call is timed per pipeline stage into ServerStats. Requests that are not valid protobuf
are answered INVALID_ARGUMENT by the handler, not failed inside gRPC's deserializer (which
would log a traceback per call and answer INTERNAL).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc

from .batching import DeadlineExpired, Overloaded
from .decode import InvalidRequest, NoKnownClicks
from .metrics import ServerStats
from .proto import recommender_pb2 as pb
from .recommender import SOURCE_POPULARITY, Recommender, Result

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Recommender"].full_name  # "recsys.v1.Recommender"
_SOURCES = {
    "model": pb.SOURCE_MODEL,
    SOURCE_POPULARITY: pb.SOURCE_POPULARITY,
    "online": pb.SOURCE_ONLINE,
    "blend": pb.SOURCE_BLEND,
}
_STATUS_OF = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    NoKnownClicks: grpc.StatusCode.NOT_FOUND,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExpired: grpc.StatusCode.DEADLINE_EXCEEDED,
}
_EXPECTED = tuple(_STATUS_OF)


class _Undecodable:
    """What the deserializer hands the handler for bytes that are not a valid request."""


UNDECODABLE = _Undecodable()


def _tolerant(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception:  # DecodeError, invalid UTF-8 in a string field, ...
            return UNDECODABLE

    return deserialize


class Handlers:
    """recsys.v1.Recommender's methods over the current Recommender."""

    def __init__(self, stats: ServerStats):
        self.stats = stats
        self.engine: Recommender | None = None  # set once a model is loaded
        self.status = pb.StatusResponse()
        self.closing = False  # shutting down: new calls are told to go elsewhere
        self.in_flight = 0  # calls inside _answer now

    def generic_handler(self) -> grpc.GenericRpcHandler:
        def unary(fn: Callable, request: Any, response: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                fn,
                request_deserializer=_tolerant(request.FromString),
                response_serializer=response.SerializeToString,
            )

        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "Recommend": unary(self.recommend, pb.RecommendRequest, pb.RecommendResponse),
                "ScoreItems": unary(self.score_items, pb.ScoreItemsRequest, pb.ScoreItemsResponse),
                "Status": unary(self.get_status, pb.StatusRequest, pb.StatusResponse),
            },
        )

    async def recommend(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._answer("Recommend", request, context)

    async def score_items(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._answer("ScoreItems", request, context)

    async def get_status(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return self.status

    async def _answer(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """decode -> session -> (queue, model) -> finish -> respond, each stage timed; every
        failure becomes a status code: nothing a request does may take the process down."""
        stats, stage = self.stats, self.stats.stage_seconds
        t0 = time.perf_counter()
        engine = self.engine
        code, message, response = grpc.StatusCode.OK, "", None
        self.in_flight += 1
        try:
            if self.closing:
                # answered here, not left to gRPC's shutdown, which cancels calls that arrive
                # while it stops: CANCELLED is not retried by clients, UNAVAILABLE is
                code, message = grpc.StatusCode.UNAVAILABLE, "shutting down; retry elsewhere"
            elif request is UNDECODABLE:
                stats.undecodable[method] = stats.undecodable.get(method, 0) + 1
                raise InvalidRequest(
                    f"the request is not a valid recsys.v1.{method}Request (protobuf, strings "
                    "in UTF-8); check the client's generated code and encoding"
                )
            if engine is None:
                code, message = grpc.StatusCode.UNAVAILABLE, "model is loading; retry shortly"
            else:
                scoring = method == "ScoreItems"
                query = (engine.decode_score_items if scoring else engine.decode)(request)
                t_decoded = time.perf_counter()
                now = time.time()
                engine.learn(query, now)
                t1 = time.perf_counter()
                remaining = context.time_remaining()
                deadline = time.monotonic() + remaining if remaining is not None else float("inf")
                job = engine.prepare(query, deadline)
                t2 = t3 = time.perf_counter()
                if job is None:
                    result = engine.popularity(query, now)
                else:
                    assert engine.batcher is not None
                    await engine.batcher.submit(job)
                    t3 = time.perf_counter()
                    result = engine.finish(query, job, now)
                t4 = time.perf_counter()
                response = _response(method, result, engine.model.model_version)
                stats.record_outcome(
                    result.cache,
                    len(result.unknown_clicks),
                    result.source == SOURCE_POPULARITY,
                    result.skipped_clicks,
                )
                stage["decode"] += t_decoded - t0
                stage["learn"] += t1 - t_decoded
                stage["session"] += t2 - t1
                stage["model"] += t3 - t2  # queue wait and model run, from the call's side
                stage["finish"] += t4 - t3
                stage["respond"] += time.perf_counter() - t4
        except _EXPECTED as err:
            code, message = _STATUS_OF[type(err)], str(err)
        except Exception:  # a bug, not the caller's fault: log it, keep serving
            log.exception("%s failed", method)
            code, message = grpc.StatusCode.INTERNAL, "internal error; see the server log"
        finally:
            self.in_flight -= 1
        stats.record_call(method, code.name, time.perf_counter() - t0)
        if code is not grpc.StatusCode.OK:
            await context.abort(code, message)
        return response


def _response(method: str, result: Result, model_version: str) -> Any:
    source = _SOURCES[result.source]
    reply = pb.ScoreItemsResponse() if method == "ScoreItems" else pb.RecommendResponse()
    add = reply.items.add  # adding in place is cheaper than building a list of messages
    if result.item_sources is None:
        for item, score in zip(result.item_ids, result.scores, strict=True):
            add(item_id=item, score=score, source=source)
    else:
        triples = zip(result.item_ids, result.scores, result.item_sources, strict=True)
        for item, score, part in triples:
            add(item_id=item, score=score, source=_SOURCES[part])
    reply.recommendation_id = str(uuid.uuid4())
    reply.model_version = model_version
    reply.unknown_clicks.extend(result.unknown_clicks)
    reply.source = source
    reply.skipped_clicks = result.skipped_clicks
    if method == "ScoreItems":
        reply.unknown_candidates.extend(result.unknown_candidates)
    elif result.bottom_ids:
        add, part = reply.bottom_items.add, _SOURCES[result.bottom_source]
        for item, score in zip(result.bottom_ids, result.bottom_scores, strict=True):
            add(item_id=item, score=score, source=part)
    return reply
