"""The JSON messages of the web front's API: recsys.v1's messages as pydantic models (for
clients that cannot speak gRPC), plus the page's own (items, verdicts). FastAPI turns them
into the OpenAPI schema at /openapi.json (browsable at /docs)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

SourceName = Literal["unspecified", "model", "popularity", "online", "blend"]


class ApiError(Exception):
    """An answer other than success: HTTP status, a short code and a message for a person."""

    def __init__(self, http_status: int, code: str, message: str):
        super().__init__(message)
        self.http_status = http_status
        self.code = code
        self.message = message


class ErrorBody(BaseModel):
    detail: str = Field(description="What went wrong and what to do, for a person to read.")
    code: str = Field(description="Short machine-readable name, e.g. upstream_unavailable.")


class ScoredItem(BaseModel):
    item_id: str
    score: float = Field(description="Higher is better; comparable only within one list.")
    source: SourceName = Field(description="Which part of the service placed the item.")


class RecommendIn(BaseModel):
    """recsys.v1.RecommendRequest, plus the choice of service and of unknown-id handling."""

    session_id: str = Field("", max_length=256, description="Opaque session key (state cache).")
    clicks: list[str] = Field(min_length=1, description="Clicked item ids, oldest first.")
    top_k: int = Field(5, ge=0, le=1000, description="Best items to return (0: server's 20).")
    bottom_k: int = Field(5, ge=0, le=1000, description="Least likely items to return too.")
    exclude_items: list[str] = Field(default_factory=list, description="Never return these.")
    exclude_clicked: bool = Field(False, description="Leave the session's clicks out.")
    strict: bool = Field(False, description="No known click: 404 instead of popularity.")
    allow_unknown: bool = Field(
        False,
        description="Skip clicks the model does not know, as gRPC does; by default this API "
        "answers 400 naming them.",
    )
    model: str | None = Field(None, description="Service to ask (a key from /api/models).")


class RecommendOut(BaseModel):
    recommendation_id: str = Field(description="UUID4 of this answer; verdicts refer to it.")
    items: list[ScoredItem] = Field(description="Best first.")
    bottom_items: list[ScoredItem] = Field(description="Least likely first (model logits).")
    model_version: str
    unknown_clicks: list[str]
    source: SourceName
    skipped_clicks: int
    model: str = Field(description="Key of the service that answered.")


class ScoreItemsIn(BaseModel):
    """recsys.v1.ScoreItemsRequest."""

    session_id: str = Field("", max_length=256)
    clicks: list[str] = Field(min_length=1)
    candidates: list[str] = Field(min_length=1, description="Item ids to score.")
    strict: bool = False
    model: str | None = None


class ScoreItemsOut(BaseModel):
    recommendation_id: str
    items: list[ScoredItem] = Field(description="Known candidates, best first.")
    model_version: str
    unknown_clicks: list[str]
    unknown_candidates: list[str]
    source: SourceName
    skipped_clicks: int
    model: str


class ModelInfo(BaseModel):
    key: str = Field(description="What `model` takes in other calls (the service address).")
    target: str = Field(description="host:port of the gRPC service.")
    up: bool = Field(description="The service answered Status just now.")
    model_version: str = Field(description="Its model, as last reported ('' if never).")
    n_items: int
    message: str = Field("", description="Why it is down, when it is.")


class ModelsOut(BaseModel):
    top_k: int = Field(description="Best and worst items the page shows.")
    models: list[ModelInfo]


class ItemPage(BaseModel):
    total: int = Field(description="Items matching the query.")
    offset: int
    items: list[str] = Field(description="Item ids of this page, in catalogue order.")


class VerdictIn(BaseModel):
    """A person's verdict on one shown item of one recommendation."""

    recommendation_id: str = Field(min_length=1, max_length=64)
    item_id: str = Field(min_length=1, max_length=256)
    sensible: bool
    shown_in: Literal["best", "worst"] = Field(description="Which list the item was in.")
    rank: int = Field(ge=1, le=1000, description="1-based place in that list.")
    score: float
    source: SourceName
    model_version: str = Field(max_length=256)
    session_id: str = Field("", max_length=256)
    clicks: list[str] = Field(min_length=1, max_length=1000, description="Oldest first.")


class VerdictAck(BaseModel):
    recommendation_id: str
    item_id: str
    sensible: bool
    stored_at: float = Field(description="Unix seconds; the verdict is on disk.")


class SummaryRow(BaseModel):
    model_version: str
    verdicts: int
    sensible: int
    share_sensible: float
    best_verdicts: int
    best_share_sensible: float | None
    worst_verdicts: int
    worst_share_sensible: float | None
