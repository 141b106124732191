"""Stage 1: decode and validate a request into a Query the later stages can trust.

    query = decode_recommend(request, vocabulary, limits, client_id)   # raises InvalidRequest

client_id is the call's x-client-id metadata ("" without), checked like the request's fields.

Limits are checked before any per-id work, so an oversized request costs little; error
messages quote at most a few ids, each shortened, so they stay far below gRPC's metadata
limit whatever the caller sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..proto import recommender_pb2 as pb

QUOTED_IDS = 3  # ids quoted in an error message
QUOTED_CHARS = 32  # characters of each quoted id
_NONE = np.zeros(0, dtype=np.int64)


class RequestError(Exception):
    """A request the service will not answer; the message says what to fix."""


class InvalidRequest(RequestError):
    """Malformed request: gRPC INVALID_ARGUMENT."""


class NoKnownClicks(RequestError):
    """strict request whose clicks are all unknown to the model: gRPC NOT_FOUND."""


@dataclass(frozen=True)
class Limits:
    max_clicks: int = 200
    max_top_k: int = 1000
    default_top_k: int = 20  # what top_k=0 (unset) means
    max_candidates: int = 1000
    max_exclude: int = 1000
    max_session_id_bytes: int = 256
    max_user_id_bytes: int = 256
    max_item_id_bytes: int = 128
    max_client_id_bytes: int = 128  # x-client-id: a hash of a device or address
    max_put_items: int = 1000  # PutItems items (and removals) per call: ~150 KB


@dataclass(slots=True)
class Query:
    """A validated call. Indices are the model's item indices (int64)."""

    session_id: str
    clicks: list[str]  # as sent, oldest first (the online layer learns from them)
    known: np.ndarray  # (n_known,) indices of the known clicks, in order
    unknown: list[str]  # clicks the model does not know, in request order
    top_k: int  # 0 for ScoreItems
    exclude_ids: list[str]  # exclude_items as sent
    excluded: np.ndarray  # (m,) indices never to return: exclude_items (+ clicks if asked)
    exclude_clicked: bool
    strict: bool
    candidates: np.ndarray | None = None  # ScoreItems: (c,) known candidate indices
    unknown_candidates: list[str] | None = None
    bottom_k: int = 0  # least likely items to return too (Recommend only)
    client_id: str = ""  # gRPC metadata x-client-id: whose learning is capped (guard.py)
    user_id: str = ""  # whose state a new session starts from (users.py); never logged


def quote(ids: Sequence[str]) -> str:
    """'a', 'b', 'c', ... (N in all): a few ids, each cut short, safe for an error text."""
    shown = []
    for item in list(ids[:QUOTED_IDS]):
        text = item if len(item) <= QUOTED_CHARS else item[:QUOTED_CHARS] + "..."
        shown.append(repr(text))
    more = f", ... ({len(ids)} in all)" if len(ids) > QUOTED_IDS else ""
    return ", ".join(shown) + more


def decode_recommend(
    request: pb.RecommendRequest, index: Mapping[str, int], limits: Limits, client_id: str = ""
) -> Query:
    clicks = list(request.clicks)
    _check_session(request.session_id, clicks, limits)
    _check_client(client_id, limits)
    _check_user(request.user_id, limits, request.session_id)
    k = request.top_k or limits.default_top_k
    if not 1 <= k <= limits.max_top_k:
        raise InvalidRequest(
            f"top_k={request.top_k} is out of range; ask for 1 to {limits.max_top_k} items "
            f"(0 means {limits.default_top_k})"
        )
    if not 0 <= request.bottom_k <= limits.max_top_k:
        raise InvalidRequest(
            f"bottom_k={request.bottom_k} is out of range; ask for 0 to {limits.max_top_k} "
            "least likely items"
        )
    exclude = list(request.exclude_items)
    _check_count("exclude_items", exclude, limits.max_exclude, "item ids to exclude")
    _check_ids("exclude_items", exclude, limits)
    known, unknown = encode(clicks, index)
    excluded = lookup(exclude, index)
    if len(excluded):
        excluded = excluded[excluded >= 0]
    if request.exclude_clicked:
        excluded = np.concatenate([excluded, known])
    return Query(
        request.session_id,
        clicks,
        known,
        unknown,
        k,
        exclude,
        excluded,
        request.exclude_clicked,
        request.strict,
        bottom_k=request.bottom_k,
        client_id=client_id,
        user_id=request.user_id,
    )


def decode_score_items(
    request: pb.ScoreItemsRequest, index: Mapping[str, int], limits: Limits, client_id: str = ""
) -> Query:
    clicks = list(request.clicks)
    _check_session(request.session_id, clicks, limits)
    _check_client(client_id, limits)
    _check_user(request.user_id, limits, request.session_id)
    candidates = list(request.candidates)
    if not candidates:
        raise InvalidRequest(
            f"candidates is empty; send 1 to {limits.max_candidates} item ids to score"
        )
    _check_count("candidates", candidates, limits.max_candidates, "item ids to score")
    _check_ids("candidates", candidates, limits)
    candidates = list(dict.fromkeys(candidates))  # each id scored once, at its first place
    known, unknown = encode(clicks, index)
    cand = lookup(candidates, index)
    ok = cand >= 0
    unknown_candidates = [c for c, k in zip(candidates, ok, strict=True) if not k]
    empty = np.zeros(0, dtype=np.int64)
    return Query(
        request.session_id,
        clicks,
        known,
        unknown,
        0,
        [],
        empty,
        False,
        request.strict,
        cand[ok],
        unknown_candidates,
        client_id=client_id,
        user_id=request.user_id,
    )


def decode_put_items(
    request: pb.PutItemsRequest, limits: Limits
) -> tuple[list[tuple[str, float]], list[str]]:
    """((item id, expires_at) to announce, ids to withdraw) of a PutItems request; raises
    InvalidRequest."""
    items = [(item.item_id, item.expires_at) for item in request.items]
    remove = list(request.remove_item_ids)
    if not items and not remove:
        raise InvalidRequest("items and remove_item_ids are both empty; send item ids")
    for field, count in (("items", len(items)), ("remove_item_ids", len(remove))):
        if count > limits.max_put_items:
            raise InvalidRequest(
                f"{field} has {count} entries; send at most {limits.max_put_items} per call"
            )
    ids = [item for item, _ in items]
    _check_ids("items", ids, limits)
    _check_ids("remove_item_ids", remove, limits)
    bad = [item for item, expiry in items if not (expiry >= 0 and np.isfinite(expiry))]
    if bad:
        raise InvalidRequest(
            f"items {quote(bad)} have an expires_at that is negative or not a number; send "
            "Unix seconds, or 0 for no expiry"
        )
    if "" in ids:
        raise InvalidRequest("an item_id is empty; every item needs its id")
    return items, remove


def decode_forget_user(request: pb.ForgetUserRequest, limits: Limits) -> str:
    """The user id of a ForgetUser request; raises InvalidRequest."""
    if not request.user_id:
        raise InvalidRequest("user_id is empty; send the user id to forget")
    _check_user(request.user_id, limits)
    return request.user_id


def lookup(ids: Sequence[str], index: Mapping[str, int]) -> np.ndarray:
    """Indices (int64) of ids, -1 where unknown."""
    if not ids:
        return _NONE
    get = index.get
    return np.array([get(i, -1) for i in ids], dtype=np.int64)


def encode(ids: Sequence[str], index: Mapping[str, int]) -> tuple[np.ndarray, list[str]]:
    """(known indices in order, unknown ids in order)."""
    idx = lookup(ids, index)
    ok = idx >= 0
    if ok.all():
        return idx, []
    return idx[ok], [i for i, k in zip(ids, ok, strict=True) if not k]


def _check_session(session_id: str, clicks: list[str], limits: Limits) -> None:
    size = len(session_id.encode())
    if size > limits.max_session_id_bytes:
        raise InvalidRequest(
            f"session_id is {size} bytes long; use at most "
            f"{limits.max_session_id_bytes} (e.g. a hash of a longer key)"
        )
    if not clicks:
        raise InvalidRequest(
            "clicks is empty; send the session's clicked item ids, oldest first "
            "(for a session without clicks, show a popularity list instead)"
        )
    if len(clicks) > limits.max_clicks:
        raise InvalidRequest(
            f"clicks has {len(clicks)} ids; send at most the last "
            f"{limits.max_clicks} clicks of the session"
        )
    _check_ids("clicks", clicks, limits)


def _check_client(client_id: str, limits: Limits) -> None:
    size = len(client_id.encode())
    if size > limits.max_client_id_bytes:
        raise InvalidRequest(
            f"the x-client-id metadata is {size} bytes long; send at most "
            f"{limits.max_client_id_bytes} (a hash of the device or address)"
        )


def _check_user(user_id: str, limits: Limits, session_id: str | None = None) -> None:
    """session_id: the call's, for calls that carry one (not ForgetUser)."""
    if user_id and session_id == "":
        raise InvalidRequest(
            "user_id needs a session_id: a user's sessions are told apart by it; send the "
            "session's id as well, or no user_id"
        )
    size = len(user_id.encode())  # the id itself is never quoted: it names a person
    if size > limits.max_user_id_bytes:
        raise InvalidRequest(
            f"user_id is {size} bytes long; use at most {limits.max_user_id_bytes} (a keyed "
            "hash of the account id)"
        )


def _check_count(field: str, ids: list[str], limit: int, what: str) -> None:
    if len(ids) > limit:
        raise InvalidRequest(f"{field} has {len(ids)} ids; send at most {limit} {what}")


def _check_ids(field: str, ids: list[str], limits: Limits) -> None:
    if not ids:
        return
    limit = limits.max_item_id_bytes
    # a character is at most 4 bytes: only ids long in characters need encoding
    if max(map(len, ids)) * 4 <= limit:
        return
    long = [i for i in ids if len(i.encode()) > limit]
    if long:
        raise InvalidRequest(
            f"{field} has {len(long)} ids longer than {limit} bytes ({quote(long)}); "
            "item ids are at most that long"
        )
