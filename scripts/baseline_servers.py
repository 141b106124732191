"""Two reference servers for scripts/bench_service.py, speaking recsys.v1.Recommender.

    python scripts/baseline_servers.py echo --port 0
    python scripts/baseline_servers.py torch --model runs/demo --port 0

echo   the same gRPC stack as the service (grpc.aio on uvloop) answering every Recommend with
       a fixed 20-item response: the most calls/s this machine's gRPC can do, the ceiling.
torch  what a plain implementation does: a thread-pool gRPC server that runs the PyTorch
       model on each request by itself, the session's clicks one forward call each from the
       zero state (no state cache, no batching), then torch.topk.
Both print "gRPC on 127.0.0.1:PORT" on stderr once listening, like the service.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from concurrent import futures
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.proto import recommender_pb2 as pb  # noqa: E402
from service.proto import recommender_pb2_grpc as pb_grpc  # noqa: E402


class Echo(pb_grpc.RecommenderServicer):
    def __init__(self) -> None:
        items = [pb.ScoredItem(item_id=f"item{i}", score=1.0 / (i + 1)) for i in range(20)]
        self.reply = pb.RecommendResponse(items=items, model_version="echo")

    async def Recommend(self, request, context):  # noqa: N802 (gRPC's name)
        return self.reply


class TorchPerRequest(pb_grpc.RecommenderServicer):
    def __init__(self, model_dir: str):
        import torch

        from training.fit.train import load_model

        torch.set_num_threads(1)  # the pool's threads already run side by side
        self.torch = torch
        trained = load_model(model_dir, device="cpu")
        self.model = trained.model.eval()
        self.ids = [str(i) for i in trained.vocab.ids]
        self.index = {item: n for n, item in enumerate(self.ids)}

    def Recommend(self, request, context):  # noqa: N802
        torch = self.torch
        known = [self.index[c] for c in request.clicks if c in self.index]
        if not known:
            context.abort(grpc.StatusCode.NOT_FOUND, "no known click")
        with torch.no_grad():
            hidden = self.model.init_hidden(1)
            for item in known:
                scores, hidden = self.model(torch.tensor([item]), hidden, None)
            top = torch.topk(scores[0], request.top_k or 20)
        items = [
            pb.ScoredItem(item_id=self.ids[i], score=s)
            for i, s in zip(top.indices.tolist(), top.values.tolist(), strict=True)
        ]
        return pb.RecommendResponse(
            recommendation_id=str(uuid.uuid4()), items=items, model_version="torch"
        )


async def serve_echo(port: int) -> None:
    server = grpc.aio.server()
    pb_grpc.add_RecommenderServicer_to_server(Echo(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"gRPC on 127.0.0.1:{bound}", file=sys.stderr, flush=True)
    await server.wait_for_termination()


def serve_torch(model_dir: str, port: int, threads: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(threads))
    pb_grpc.add_RecommenderServicer_to_server(TorchPerRequest(model_dir), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(f"gRPC on 127.0.0.1:{bound}", file=sys.stderr, flush=True)
    server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=["echo", "torch"])
    parser.add_argument("--model", help="trained model directory (torch)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--threads", type=int, default=4, help="torch: gRPC pool threads")
    args = parser.parse_args()
    if args.kind == "echo":
        import uvloop

        uvloop.run(serve_echo(args.port))
    else:
        serve_torch(args.model, args.port, args.threads)


if __name__ == "__main__":
    main()
