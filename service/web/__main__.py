"""Start the sanity-check page, or export its verdicts.

    python -m service.web --grpc 127.0.0.1:50051 --port 8080 --db feedback.sqlite
    python -m service.web --grpc 127.0.0.1:50051 --grpc 127.0.0.1:50052 ...  # two models
    python -m service.web export-feedback --db feedback.sqlite --out verdicts.csv

Serving is the default command; open http://HOST:PORT/ (the API schema is at /docs).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from .catalogue import CatalogueError
from .config import WebConfig
from .feedback import FeedbackStore, StoreError, write_export

EXPORT = "export-feedback"


def serve_parser() -> argparse.ArgumentParser:
    d = WebConfig()
    p = argparse.ArgumentParser(
        prog="python -m service.web",
        description="The sanity-check page over running recommendation services "
        f"(`python -m service.web {EXPORT} --help` for the export).",
    )
    p.add_argument(
        "--grpc", action="append", metavar="HOST:PORT",
        help=f"a gRPC service; repeat for several model versions (default {d.grpc_targets[0]})",
    )  # fmt: skip
    p.add_argument("--host", default=d.host, help=f"address to listen on (default {d.host})")
    p.add_argument("--port", type=int, default=d.port, help=f"HTTP port (default {d.port})")
    p.add_argument("--db", type=Path, default=d.db, help=f"verdict database (default {d.db})")
    p.add_argument(
        "--items", type=Path, help="item ids, one a line (default: the export's items.txt)"
    )
    p.add_argument("--images", type=Path, help="directory of <item>.png (default: drawn)")
    p.add_argument(
        "--timeout-s", type=float, default=d.timeout_s, help="deadline of each gRPC call"
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m service.web {EXPORT}",
        description="Write every stored verdict to a CSV or JSON file.",
    )
    p.add_argument("--db", type=Path, required=True, help="the page's verdict database")
    p.add_argument("--out", type=Path, required=True, help="file to write (.csv or .json)")
    p.add_argument("--format", choices=["csv", "json"], help="default: from --out's suffix")
    return p


def export(argv: Sequence[str]) -> int:
    args = export_parser().parse_args(argv)
    if not args.db.is_file():
        print(f"error: no feedback database at {args.db}; give the page's --db", file=sys.stderr)
        return 2
    try:
        store = FeedbackStore(args.db)
        n = write_export(store, args.out, args.format)
    except (StoreError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    store.close()
    print(f"wrote {n} verdicts to {args.out}")
    return 0


def serve(argv: Sequence[str]) -> int:
    args = serve_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    try:
        config = WebConfig(
            grpc_targets=tuple(args.grpc or WebConfig().grpc_targets),
            db=args.db,
            host=args.host,
            port=args.port,
            items=args.items,
            images=args.images,
            timeout_s=args.timeout_s,
        )
        import uvicorn  # after the checks: a bad flag answers without the import's cost

        from .app import create_app

        app = create_app(config)
    except (ValueError, StoreError, CatalogueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"sanity-check page on http://{config.host}:{config.port}/", flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level=args.log_level)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [EXPORT]:
        return export(argv[1:])
    return serve(argv)


if __name__ == "__main__":
    sys.exit(main())
