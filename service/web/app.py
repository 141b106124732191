"""The web front's routes: the page, the JSON API over the gRPC services, the verdicts.

    app = create_app(WebConfig(grpc_targets=("127.0.0.1:50051",), db=Path("f.sqlite")))
    uvicorn.run(app, host="127.0.0.1", port=8080)

No model code runs here: every recommendation is a gRPC call (upstream.py). Errors reach the
page as JSON {"detail": sentence, "code": name} with a status that says whose fault it was:
400 bad input, 503 service away (the page retries), 504 too slow, 507 feedback disk full.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from ..proto import recommender_pb2 as pb
from .catalogue import Catalogue, CatalogueError
from .config import WebConfig
from .feedback import FeedbackStore, StoreError, StoreFull, Verdict, render
from .images import ItemImages
from .schema import (
    ApiError,
    ErrorBody,
    ItemPage,
    ModelInfo,
    ModelsOut,
    RecommendIn,
    RecommendOut,
    ScoredItem,
    ScoreItemsIn,
    ScoreItemsOut,
    SummaryRow,
    VerdictAck,
    VerdictIn,
)
from .upstream import Upstream, UpstreamError

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
IMAGE_MAX_AGE_S = 86400  # drawn images never change; files in --images rarely do
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 404, 502, 503, 504, 507)
}


def _source(value: int) -> Any:
    return pb.Source.Name(value).removeprefix("SOURCE_").lower()


def _items(items: Any) -> list[ScoredItem]:
    return [ScoredItem(item_id=i.item_id, score=i.score, source=_source(i.source)) for i in items]


class Services:
    """The gRPC services by key, and each one's item catalogue (loaded when first needed
    and again when the service reports another model version)."""

    def __init__(self, config: WebConfig, fixed: Catalogue | None):
        self.config = config
        self.upstreams = {t: Upstream(t, config.timeout_s) for t in config.grpc_targets}
        self.fixed = fixed  # --items: one list for every service
        self._catalogues: dict[str, tuple[str, Catalogue]] = {}  # key -> (version, catalogue)

    def get(self, key: str | None) -> Upstream:
        if key is None:
            return next(iter(self.upstreams.values()))
        try:
            return self.upstreams[key]
        except KeyError:
            known = ", ".join(self.upstreams)
            message = f"no service {key!r}; choose one of {known}"
            raise ApiError(400, "unknown_model", message) from None

    async def catalogue(self, upstream: Upstream) -> Catalogue:
        if self.fixed is not None:
            return self.fixed
        held = self._catalogues.get(upstream.target)
        try:
            status = await upstream.status()
        except UpstreamError:
            if held is None:
                raise
            return held[1]  # the service is away: the grid stays usable meanwhile
        if held is not None and held[0] == status.model_version:
            return held[1]
        try:
            catalogue = await asyncio.to_thread(Catalogue.from_export, status.model_dir)
        except CatalogueError as err:
            raise ApiError(503, "no_catalogue", f"The item list is missing: {err}") from None
        self._catalogues[upstream.target] = (status.model_version, catalogue)
        return catalogue

    async def info(self, upstream: Upstream) -> ModelInfo:
        try:
            status = await upstream.status()
            up, message = True, ""
        except UpstreamError as err:
            status, up, message = upstream.last_status or pb.StatusResponse(), False, err.message
        return ModelInfo(
            key=upstream.target,
            target=upstream.target,
            up=up,
            model_version=status.model_version,
            n_items=status.n_items,
            message=message,
        )

    async def close(self) -> None:
        for upstream in self.upstreams.values():
            await upstream.close()


def create_app(config: WebConfig, store: FeedbackStore | None = None) -> FastAPI:
    """The ASGI app. store: the verdict store (default: opened at config.db). Raises
    feedback.StoreError, catalogue.CatalogueError (--items) or ValueError (--images) when
    they cannot be read. The gRPC channels open at startup, inside the serving loop."""
    store = store if store is not None else FeedbackStore(config.db)
    images = ItemImages(config.images)
    fixed = Catalogue.read(config.items) if config.items is not None else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.services = Services(config, fixed)
        yield
        await app.state.services.close()

    app = FastAPI(
        title="sessionrec sanity-check page",
        description="Play a shopper, judge the recommendations, keep the verdicts. The "
        "/api/recommend and /api/score-items calls mirror recsys.v1.Recommender.",
        version="1",
        lifespan=lifespan,
    )
    app.state.store = store
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def services(request: Request) -> Services:
        return request.app.state.services

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return JSONResponse({"detail": err.message, "code": err.code}, err.http_status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}"
            for e in err.errors()[:5]
        )
        return JSONResponse({"detail": f"Invalid request: {problems}", "code": "invalid"}, 400)

    @app.exception_handler(Exception)
    async def bug(request: Request, err: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        body = {"detail": "Internal error in the web front; see its log.", "code": "internal"}
        return JSONResponse(body, 500)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/api/models", response_model=ModelsOut, summary="The services and their models")
    async def models(request: Request) -> ModelsOut:
        svc = services(request)
        infos = await asyncio.gather(*(svc.info(u) for u in svc.upstreams.values()))
        return ModelsOut(top_k=config.top_k, models=list(infos))

    @app.get("/api/items", response_model=ItemPage, responses=_ERRORS, summary="Item ids, paged")
    async def items(
        request: Request,
        q: Annotated[str, Query(max_length=256, description="Substring of the id")] = "",
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=500)] = 48,
        model: Annotated[str | None, Query(description="Key from /api/models")] = None,
    ) -> ItemPage:
        svc = services(request)
        catalogue = await svc.catalogue(svc.get(model))
        total, ids = catalogue.page(q, offset, limit)
        return ItemPage(total=total, offset=offset, items=ids)

    @app.get("/api/image", summary="The item's picture (PNG)", response_class=Response)
    async def image(item: Annotated[str, Query(min_length=1, max_length=256)]) -> Response:
        png, _ = await asyncio.to_thread(images.png, item)
        cache = f"public, max-age={IMAGE_MAX_AGE_S}"
        return Response(png, media_type="image/png", headers={"Cache-Control": cache})

    @app.post("/api/recommend", response_model=RecommendOut, responses=_ERRORS)
    async def recommend(request: Request, body: RecommendIn) -> RecommendOut:
        """recsys.v1.Recommender/Recommend. Clicks the model does not know are a 400 unless
        allow_unknown (gRPC skips them and lists them in unknown_clicks)."""
        upstream = services(request).get(body.model)
        message = pb.RecommendRequest(
            session_id=body.session_id,
            clicks=body.clicks,
            top_k=body.top_k,
            bottom_k=body.bottom_k,
            exclude_items=body.exclude_items,
            exclude_clicked=body.exclude_clicked,
            strict=body.strict,
        )
        reply = await upstream.recommend(message, client_id(request))
        if reply.unknown_clicks and not body.allow_unknown:
            raise ApiError(400, "unknown_items", _unknown(reply))
        return RecommendOut(
            recommendation_id=reply.recommendation_id,
            items=_items(reply.items),
            bottom_items=_items(reply.bottom_items),
            model_version=reply.model_version,
            unknown_clicks=list(reply.unknown_clicks),
            source=_source(reply.source),
            skipped_clicks=reply.skipped_clicks,
            model=upstream.target,
        )

    @app.post("/api/score-items", response_model=ScoreItemsOut, responses=_ERRORS)
    async def score_items(request: Request, body: ScoreItemsIn) -> ScoreItemsOut:
        """recsys.v1.Recommender/ScoreItems, as gRPC answers it."""
        upstream = services(request).get(body.model)
        message = pb.ScoreItemsRequest(
            session_id=body.session_id,
            clicks=body.clicks,
            candidates=body.candidates,
            strict=body.strict,
        )
        reply = await upstream.score_items(message, client_id(request))
        return ScoreItemsOut(
            recommendation_id=reply.recommendation_id,
            items=_items(reply.items),
            model_version=reply.model_version,
            unknown_clicks=list(reply.unknown_clicks),
            unknown_candidates=list(reply.unknown_candidates),
            source=_source(reply.source),
            skipped_clicks=reply.skipped_clicks,
            model=upstream.target,
        )

    @app.post("/api/feedback", response_model=VerdictAck, responses=_ERRORS)
    def feedback(body: VerdictIn) -> VerdictAck:
        """Store a verdict; the answer comes only once it is committed to disk. The same
        (recommendation_id, item_id) again replaces the earlier verdict."""
        verdict = Verdict(**{**body.model_dump(), "clicks": tuple(body.clicks)})
        try:
            stored = store.save(verdict)
        except StoreFull as err:
            raise ApiError(507, "feedback_disk_full", str(err)) from None
        except StoreError as err:
            raise ApiError(503, "feedback_store_error", str(err)) from None
        return VerdictAck(
            recommendation_id=stored.recommendation_id,
            item_id=stored.item_id,
            sensible=stored.sensible,
            stored_at=stored.created_at,
        )

    @app.get("/api/feedback/summary", response_model=list[SummaryRow])
    def summary() -> list[SummaryRow]:
        """Share of sensible verdicts per model version."""
        return [SummaryRow(**row) for row in store.summary()]

    @app.get("/api/feedback/export", summary="Every verdict as CSV or JSON")
    def export(fmt: Annotated[str, Query(alias="format", pattern="^(csv|json)$")] = "csv") -> Any:
        content = render(store.rows(), fmt)
        media = "text/csv" if fmt == "csv" else "application/json"
        disposition = f'attachment; filename="verdicts.{fmt}"'
        return Response(content, media_type=media, headers={"Content-Disposition": disposition})

    return app


def client_id(request: Request) -> str:
    """The page user's x-client-id for the service: a hash of the address the page's
    request came from, so that whatever a browser sends (its own session ids included),
    the service caps what it learns from that address. Behind a proxy every user shares
    the proxy's address, and so its caps."""
    host = request.client.host if request.client is not None else ""
    return hashlib.sha256(f"sanity-page {host}".encode()).hexdigest()[:32]


def _unknown(reply: pb.RecommendResponse) -> str:
    shown = ", ".join(repr(i[:40]) for i in list(reply.unknown_clicks)[:3])
    more = f" and {len(reply.unknown_clicks) - 3} more" if len(reply.unknown_clicks) > 3 else ""
    return (
        f"Unknown item ids {shown}{more}: model {reply.model_version} does not know them. "
        "Pick items from the grid, or reset the session if it came from another model."
    )
