"""Command-line and Python client of recsys.v1.Recommender.

python -m service.tools.client --target 127.0.0.1:50051 --session s1 --clicks a b c --top-k 10
python -m service.tools.client --target 127.0.0.1:50051 --clicks a b --candidates x y z

with RecommenderClient("127.0.0.1:50051") as client:
    response = client.recommend("s1", ["a", "b"], top_k=10)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc

from ..proto import recommender_pb2 as pb
from ..proto import recommender_pb2_grpc as pb_grpc


class RecommenderClient:
    """A channel and stub; calls raise grpc.RpcError on a non-OK status."""

    def __init__(self, target: str, timeout_s: float = 10.0):
        self.channel = grpc.insecure_channel(target)
        self.stub = pb_grpc.RecommenderStub(self.channel)
        self.timeout_s = timeout_s

    def __enter__(self) -> RecommenderClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        """Block until the channel connects; raises grpc.FutureTimeoutError."""
        grpc.channel_ready_future(self.channel).result(timeout=timeout_s)

    def recommend(
        self,
        session_id: str,
        clicks: Sequence[str],
        top_k: int = 0,
        exclude_items: Sequence[str] = (),
        exclude_clicked: bool = False,
        strict: bool = False,
        bottom_k: int = 0,
    ) -> pb.RecommendResponse:
        request = pb.RecommendRequest(
            session_id=session_id,
            clicks=list(clicks),
            top_k=top_k,
            exclude_items=list(exclude_items),
            exclude_clicked=exclude_clicked,
            strict=strict,
            bottom_k=bottom_k,
        )
        return self.stub.Recommend(request, timeout=self.timeout_s)

    def status(self) -> pb.StatusResponse:
        return self.stub.Status(pb.StatusRequest(), timeout=self.timeout_s)

    def score_items(
        self,
        session_id: str,
        clicks: Sequence[str],
        candidates: Sequence[str],
        strict: bool = False,
    ) -> pb.ScoreItemsResponse:
        request = pb.ScoreItemsRequest(
            session_id=session_id, clicks=list(clicks), candidates=list(candidates), strict=strict
        )
        return self.stub.ScoreItems(request, timeout=self.timeout_s)


def format_response(response: pb.RecommendResponse | pb.ScoreItemsResponse) -> str:
    """Rank, item id and score, one item a line, after a header naming the model."""
    source = pb.Source.Name(response.source).removeprefix("SOURCE_").lower()
    lines = [
        f"recommendation {response.recommendation_id} from model {response.model_version} "
        f"({source})"
    ]
    if response.unknown_clicks:
        lines.append(f"unknown clicks skipped: {' '.join(response.unknown_clicks)}")
    unknown_candidates = getattr(response, "unknown_candidates", [])
    if unknown_candidates:
        lines.append(f"unknown candidates skipped: {' '.join(unknown_candidates)}")
    lines += [
        f"{rank:>4}  {it.item_id}  {it.score:.4f}" for rank, it in enumerate(response.items, 1)
    ]
    bottom = getattr(response, "bottom_items", [])
    if bottom:
        lines.append("least likely, worst first:")
        lines += [f"{rank:>4}  {it.item_id}  {it.score:.4f}" for rank, it in enumerate(bottom, 1)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.tools.client", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--target", default="127.0.0.1:50051", help="host:port of the service")
    parser.add_argument("--session", default="", help="session id (empty: not cached)")
    parser.add_argument("--clicks", nargs="+", required=True, help="clicked item ids, oldest first")
    parser.add_argument("--top-k", type=int, default=0, help="items to return (0: server default)")
    parser.add_argument("--exclude", nargs="*", default=[], help="item ids never to recommend")
    parser.add_argument(
        "--exclude-clicked", action="store_true", help="leave the session's clicked items out"
    )
    parser.add_argument(
        "--strict", action="store_true", help="error instead of popularity fallback"
    )
    parser.add_argument(
        "--bottom-k", type=int, default=0, help="also the least likely items (0: none)"
    )
    parser.add_argument("--candidates", nargs="+", help="score these items instead (ScoreItems)")
    parser.add_argument("--timeout-s", type=float, default=10.0)
    args = parser.parse_args(argv)
    with RecommenderClient(args.target, args.timeout_s) as client:
        try:
            if args.candidates:
                response = client.score_items(
                    args.session, args.clicks, args.candidates, args.strict
                )
            else:
                response = client.recommend(
                    args.session,
                    args.clicks,
                    args.top_k,
                    args.exclude,
                    args.exclude_clicked,
                    args.strict,
                    args.bottom_k,
                )
        except grpc.RpcError as err:
            print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    print(format_response(response))
    return 0


if __name__ == "__main__":
    sys.exit(main())
