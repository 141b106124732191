"""The Recommender's gRPC methods: translate messages around recommender.Recommender.

    handlers = Handlers(ServerStats())
    server.add_generic_rpc_handlers((handlers.generic_handler(),))
    handlers.engine = Recommender(...)      # swapped by the server on a model reload

Each call is timed per pipeline stage into ServerStats. Requests that are not valid protobuf
are answered INVALID_ARGUMENT by the handler, not failed inside gRPC's deserializer (which
would log a traceback per call and answer INTERNAL). The metadata `x-client-id` names the
client whose learning is capped (guard.py). The operator methods, PutItems and ForgetUser,
need `authorization: Bearer TOKEN` with the server's operator token (--catalogue-token-file):
no anonymous client may announce items or delete a user's state. ForgetUser drops a user's
state (users.py; from Redis too with --user-store redis); user ids are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc

from .learning.catalogue import CatalogueFull
from .metrics import ServerStats
from .pipeline.batching import DeadlineExpired, Overloaded
from .pipeline.decode import InvalidRequest, NoKnownClicks, decode_forget_user, decode_put_items
from .pipeline.recommender import SOURCE_POPULARITY, Recommender, Result
from .pipeline.user_store import StoreUnavailable
from .proto import recommender_pb2 as pb

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Recommender"].full_name  # "recsys.v1.Recommender"
_SOURCES = {
    "model": pb.SOURCE_MODEL,
    SOURCE_POPULARITY: pb.SOURCE_POPULARITY,
    "online": pb.SOURCE_ONLINE,
    "blend": pb.SOURCE_BLEND,
}
CLIENT_ID_KEY = "x-client-id"  # gRPC metadata: a hash of the device or address
AUTHORIZATION_KEY = "authorization"  # PutItems, ForgetUser: "Bearer <--catalogue-token>"
# shutting down: a held refusal (hold_refusals) is answered after this long at the latest,
# and this long before the call's deadline at the latest, so it never ends DEADLINE_EXCEEDED
HOLD_REFUSAL_MAX_S = 1.0
HOLD_DEADLINE_MARGIN_S = 0.05


class NotConfigured(Exception):
    """An operator method on a server without an operator token: gRPC UNIMPLEMENTED."""


class Unauthenticated(Exception):
    """An operator method without the right token: gRPC UNAUTHENTICATED."""


_STATUS_OF = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    NoKnownClicks: grpc.StatusCode.NOT_FOUND,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExpired: grpc.StatusCode.DEADLINE_EXCEEDED,
    CatalogueFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    NotConfigured: grpc.StatusCode.UNIMPLEMENTED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
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

    def __init__(self, stats: ServerStats, catalogue_token: str | None = None):
        self.stats = stats
        self.engine: Recommender | None = None  # set once a model is loaded
        # the operator token PutItems and ForgetUser need; None: both are off
        self.catalogue_token = catalogue_token
        self.status = pb.StatusResponse()
        self.closing = False  # shutting down: new calls are refused, UNAVAILABLE
        self.in_flight = 0  # calls being answered now; refusals are not counted
        self.last_refused = 0.0  # time.monotonic() when the latest refused call arrived
        self._held: asyncio.Event | None = None  # refusals wait for it (hold_refusals)

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
                "PutItems": unary(self.put_items, pb.PutItemsRequest, pb.PutItemsResponse),
                "ForgetUser": unary(self.forget_user, pb.ForgetUserRequest, pb.ForgetUserResponse),
            },
        )

    async def recommend(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._answer("Recommend", request, context)

    async def score_items(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._answer("ScoreItems", request, context)

    async def get_status(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        t0 = time.perf_counter()
        status = self.status  # prepared on each change: nothing to compute per call
        self.stats.record_call("Status", "OK", time.perf_counter() - t0)
        return status

    async def put_items(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Announce or withdraw catalogue items (catalogue.py), with the bearer token."""
        t0 = time.perf_counter()
        code, message, response = grpc.StatusCode.OK, "", None
        try:
            self._authenticate("PutItems", context)
            engine = self.engine
            if engine is None:
                code, message = grpc.StatusCode.UNAVAILABLE, "model is loading; retry shortly"
            else:
                if request is UNDECODABLE:
                    raise InvalidRequest("the request is not a valid recsys.v1.PutItemsRequest")
                items, remove = decode_put_items(request, engine.limits)
                now, catalogue = time.time(), engine.catalogue
                added = catalogue.put(items, now)
                removed = catalogue.remove(remove)
                response = pb.PutItemsResponse(added=added, removed=removed,
                                               announced=len(catalogue))  # fmt: skip
        except _EXPECTED as err:
            code, message = _STATUS_OF[type(err)], str(err)
        except Exception:
            log.exception("PutItems failed")
            code, message = grpc.StatusCode.INTERNAL, "internal error; see the server log"
        self.stats.record_call("PutItems", code.name, time.perf_counter() - t0)
        if code is not grpc.StatusCode.OK:
            await context.abort(code, message)
        return response

    async def forget_user(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Drop what is held of a user (this replica's memory, the shared store), with the
        operator token; the same answer whether anything was held. UNAVAILABLE when the
        shared store did not answer: nothing is known to be deleted, the caller retries."""
        t0 = time.perf_counter()
        code, message = grpc.StatusCode.OK, ""
        try:
            self._authenticate("ForgetUser", context)
            engine = self.engine
            if request is UNDECODABLE:
                raise InvalidRequest("the request is not a valid recsys.v1.ForgetUserRequest")
            if engine is None:
                code, message = grpc.StatusCode.UNAVAILABLE, "model is loading; retry shortly"
            else:
                engine.forget_user(decode_forget_user(request, engine.limits))
        except _EXPECTED as err:
            code, message = _STATUS_OF[type(err)], str(err)
        except Exception:
            log.exception("ForgetUser failed")
            code, message = grpc.StatusCode.INTERNAL, "internal error; see the server log"
        self.stats.record_call("ForgetUser", code.name, time.perf_counter() - t0)
        if code is not grpc.StatusCode.OK:
            await context.abort(code, message)
        return pb.ForgetUserResponse()

    def _authenticate(self, method: str, context: grpc.aio.ServicerContext) -> None:
        """Raises NotConfigured without an operator token, Unauthenticated unless the call
        carries it."""
        expected = self.catalogue_token
        if not expected:
            raise NotConfigured(
                f"{method} is off on this server: it has no operator token; start it with "
                "--catalogue-token-file FILE (or RECSYS_CATALOGUE_TOKEN_FILE) to let operators "
                "announce items and delete users' state"
            )
        given = _metadata(context, AUTHORIZATION_KEY)
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected.encode()):
            raise Unauthenticated(
                f"{method} needs the metadata 'authorization: Bearer <token>' with the "
                "server's operator token (--catalogue-token-file)"
            )

    def hold_refusals(self) -> None:
        """From now on a refusal waits until release_refusals() (or its time is up) before
        it answers: a caller that retries at once then waits on one call, and sends no new
        one while gRPC's stop tells its connection to go away (a call that reaches gRPC
        while it stops is CANCELLED, and CANCELLED is not retried). On the event loop."""
        self._held = asyncio.Event()

    def release_refusals(self) -> None:
        """Answer the held refusals now, and later ones at once."""
        if self._held is not None:
            self._held.set()
            self._held = None

    async def _refuse(self, method: str, context: grpc.aio.ServicerContext, t0: float) -> None:
        """Shutting down: UNAVAILABLE, with no work done and nothing learnt; held first while
        hold_refusals() is on. Not counted in in_flight, so callers that retry cannot keep
        the server from going quiet. Answered here rather than left to gRPC's own stop,
        which cancels calls: CANCELLED is not retried by clients, UNAVAILABLE is."""
        self.last_refused = time.monotonic()
        held = self._held
        if held is not None:
            remaining = context.time_remaining()
            hold = HOLD_REFUSAL_MAX_S
            if remaining is not None:
                hold = min(hold, remaining - HOLD_DEADLINE_MARGIN_S)
            if hold > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(held.wait(), hold)
        engine = self.engine
        if engine is not None and engine.online is not None:
            engine.guard.refused()
        self.stats.record_call(method, "UNAVAILABLE", time.perf_counter() - t0)
        await context.abort(grpc.StatusCode.UNAVAILABLE, "shutting down; retry elsewhere")

    async def _answer(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """decode -> session -> (queue, model) -> finish -> respond, each stage timed; every
        failure becomes a status code: nothing a request does may take the process down."""
        stats, stage = self.stats, self.stats.stage_seconds
        t0 = time.perf_counter()
        engine = self.engine
        code, message, response = grpc.StatusCode.OK, "", None
        if self.closing:
            await self._refuse(method, context, t0)
        self.in_flight += 1
        try:
            if request is UNDECODABLE:
                stats.undecodable[method] = stats.undecodable.get(method, 0) + 1
                raise InvalidRequest(
                    f"the request is not a valid recsys.v1.{method}Request (protobuf, strings "
                    "in UTF-8); check the client's generated code and encoding"
                )
            if engine is None:
                code, message = grpc.StatusCode.UNAVAILABLE, "model is loading; retry shortly"
            else:
                scoring = method == "ScoreItems"
                client_id = _metadata(context, CLIENT_ID_KEY)
                query = (engine.decode_score_items if scoring else engine.decode)(
                    request, client_id
                )
                t_decoded = time.perf_counter()
                now = time.time()
                remaining = context.time_remaining()
                deadline = time.monotonic() + remaining if remaining is not None else float("inf")
                job = engine.prepare(query, deadline)
                t1 = time.perf_counter()
                if job is None:
                    engine.learn(query, now)  # answered from here on: a refused call is not
                    t3 = time.perf_counter()
                    result = engine.popularity(query, now)
                    t2, t4 = t1, time.perf_counter()
                else:  # the model (learning meanwhile), then answering with the batch
                    call = await engine.submit(query, job, now)
                    assert call.result is not None
                    result = call.result
                    t4 = time.perf_counter()
                    t3 = t4 - call.finish_s
                    t2 = t3 - call.learn_s  # learnt while the model ran: its share of the wait
                response = _response(method, result, engine.model.model_version)
                stats.record_outcome(
                    result.cache,
                    len(result.unknown_clicks),
                    result.source == SOURCE_POPULARITY,
                    result.skipped_clicks,
                )
                stage["decode"] += t_decoded - t0
                stage["session"] += t1 - t_decoded
                stage["model"] += t2 - t1  # queue wait and model run, from the call's side
                stage["learn"] += t3 - t2
                stage["finish"] += t4 - t3
                stage["respond"] += time.perf_counter() - t4
        except _EXPECTED as err:
            code, message = _STATUS_OF[type(err)], str(err)
        except Exception:  # a bug, not the caller's fault: log it, keep serving
            log.exception("%s failed", method)
            code, message = grpc.StatusCode.INTERNAL, "internal error; see the server log"
        finally:
            self.in_flight -= 1
        if code is not grpc.StatusCode.OK and engine is not None and engine.online is not None:
            engine.guard.refused()
        stats.record_call(method, code.name, time.perf_counter() - t0)
        if code is not grpc.StatusCode.OK:
            await context.abort(code, message)
        return response


def _metadata(context: grpc.aio.ServicerContext, key: str) -> str:
    """The call's text metadata value for key (lower case), "" when absent. Raises
    InvalidRequest when the key comes more than once: a value the caller added must not
    win over one a proxy appended after it."""
    values = [entry[1] for entry in context.invocation_metadata() or () if entry[0] == key]
    if len(values) > 1:
        raise InvalidRequest(f"the metadata {key!r} came {len(values)} times; send it once")
    return values[0] if values and isinstance(values[0], str) else ""


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
        add, bottom_source = reply.bottom_items.add, _SOURCES[result.bottom_source]
        for item, score in zip(result.bottom_ids, result.bottom_scores, strict=True):
            add(item_id=item, score=score, source=bottom_source)
    return reply
