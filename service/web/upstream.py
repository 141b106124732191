"""The web front's gRPC client: one async channel per service, errors turned into messages.

    upstream = Upstream("127.0.0.1:50051", timeout_s=3.0)   # inside the running event loop
    reply = await upstream.recommend(pb.RecommendRequest(clicks=["a"], top_k=5))
    await upstream.close()

Every call has a deadline. A failed call raises UpstreamError with the HTTP status the web
front answers (503 unavailable, 504 too slow, 400 bad request, ...) and a sentence for the
person at the page. The channel reconnects on its own when the service comes back; the
reconnect backoff is capped low so that the page recovers within a couple of seconds.
"""

from __future__ import annotations

import grpc

from ..proto import recommender_pb2 as pb
from ..proto import recommender_pb2_grpc as pb_grpc
from .schema import ApiError

# gRPC's defaults back off up to 120 s between reconnects: a page would stay broken for
# minutes after the service returned
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
]
STATUS_TIMEOUT_S = 1.0  # Status is cheap; the page polls it while the service is away


class UpstreamError(ApiError):
    """A gRPC call that did not succeed, as the web front answers it."""


def describe(err: grpc.RpcError, target: str) -> UpstreamError:
    """The UpstreamError for a failed call to target."""
    # grpc.aio raises AioRpcError, which has code() and details(); a bare RpcError has not
    code = err.code() if isinstance(err, grpc.aio.AioRpcError) else None
    details = (err.details() if isinstance(err, grpc.aio.AioRpcError) else "") or ""
    if code is grpc.StatusCode.UNAVAILABLE:
        return UpstreamError(
            503,
            "upstream_unavailable",
            f"The recommendation service at {target} is not answering "
            f"({details or 'no connection'}). It may be restarting: the page retries on its "
            "own; if this lasts, check that `python -m service` is running there.",
        )
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return UpstreamError(
            504,
            "upstream_timeout",
            f"The recommendation service at {target} did not answer in time. It may be "
            "overloaded; try again, or raise --timeout-s.",
        )
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return UpstreamError(400, "invalid", f"The service rejected the request: {details}")
    if code is grpc.StatusCode.NOT_FOUND:
        return UpstreamError(404, "not_found", f"The service found nothing: {details}")
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return UpstreamError(
            503, "upstream_overloaded", f"The service at {target} is overloaded ({details}); "
            "try again in a moment.",
        )  # fmt: skip
    name = code.name if code is not None else "unknown error"
    return UpstreamError(
        502, "upstream_error", f"The service at {target} failed with {name}: {details}"
    )


class Upstream:
    """One gRPC service (one model version). Create and close inside the event loop that
    makes the calls: grpc.aio channels belong to one loop."""

    def __init__(self, target: str, timeout_s: float):
        self.target = target
        self.timeout_s = timeout_s
        self.channel = grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
        self.stub = pb_grpc.RecommenderStub(self.channel)
        self.last_status: pb.StatusResponse | None = None  # the latest successful Status

    @property
    def model_version(self) -> str:
        """The version the service last reported; "" before it has answered once."""
        return self.last_status.model_version if self.last_status is not None else ""

    async def status(self) -> pb.StatusResponse:
        try:
            reply = await self.stub.Status(pb.StatusRequest(), timeout=STATUS_TIMEOUT_S)
        except grpc.RpcError as err:
            raise describe(err, self.target) from None
        self.last_status = reply
        return reply

    async def recommend(
        self, request: pb.RecommendRequest, client_id: str = ""
    ) -> pb.RecommendResponse:
        """client_id: the page user's, sent as x-client-id (the service caps learning by it)."""
        metadata = (("x-client-id", client_id),) if client_id else None
        try:
            return await self.stub.Recommend(request, timeout=self.timeout_s, metadata=metadata)
        except grpc.RpcError as err:
            raise describe(err, self.target) from None

    async def score_items(
        self, request: pb.ScoreItemsRequest, client_id: str = ""
    ) -> pb.ScoreItemsResponse:
        metadata = (("x-client-id", client_id),) if client_id else None
        try:
            return await self.stub.ScoreItems(request, timeout=self.timeout_s, metadata=metadata)
        except grpc.RpcError as err:
            raise describe(err, self.target) from None

    async def close(self) -> None:
        await self.channel.close()
