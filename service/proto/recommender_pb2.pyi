from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Source(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SOURCE_UNSPECIFIED: _ClassVar[Source]
    SOURCE_MODEL: _ClassVar[Source]
    SOURCE_POPULARITY: _ClassVar[Source]
    SOURCE_ONLINE: _ClassVar[Source]
    SOURCE_BLEND: _ClassVar[Source]
SOURCE_UNSPECIFIED: Source
SOURCE_MODEL: Source
SOURCE_POPULARITY: Source
SOURCE_ONLINE: Source
SOURCE_BLEND: Source

class RecommendRequest(_message.Message):
    __slots__ = ("session_id", "clicks", "top_k", "exclude_items", "exclude_clicked", "strict", "bottom_k", "user_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CLICKS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEMS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_CLICKED_FIELD_NUMBER: _ClassVar[int]
    STRICT_FIELD_NUMBER: _ClassVar[int]
    BOTTOM_K_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    clicks: _containers.RepeatedScalarFieldContainer[str]
    top_k: int
    exclude_items: _containers.RepeatedScalarFieldContainer[str]
    exclude_clicked: bool
    strict: bool
    bottom_k: int
    user_id: str
    def __init__(self, session_id: _Optional[str] = ..., clicks: _Optional[_Iterable[str]] = ..., top_k: _Optional[int] = ..., exclude_items: _Optional[_Iterable[str]] = ..., exclude_clicked: _Optional[bool] = ..., strict: _Optional[bool] = ..., bottom_k: _Optional[int] = ..., user_id: _Optional[str] = ...) -> None: ...

class ScoredItem(_message.Message):
    __slots__ = ("item_id", "score", "source")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    source: Source
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., source: _Optional[_Union[Source, str]] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("recommendation_id", "items", "model_version", "unknown_clicks", "source", "skipped_clicks", "bottom_items")
    RECOMMENDATION_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_CLICKS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_CLICKS_FIELD_NUMBER: _ClassVar[int]
    BOTTOM_ITEMS_FIELD_NUMBER: _ClassVar[int]
    recommendation_id: str
    items: _containers.RepeatedCompositeFieldContainer[ScoredItem]
    model_version: str
    unknown_clicks: _containers.RepeatedScalarFieldContainer[str]
    source: Source
    skipped_clicks: int
    bottom_items: _containers.RepeatedCompositeFieldContainer[ScoredItem]
    def __init__(self, recommendation_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[ScoredItem, _Mapping]]] = ..., model_version: _Optional[str] = ..., unknown_clicks: _Optional[_Iterable[str]] = ..., source: _Optional[_Union[Source, str]] = ..., skipped_clicks: _Optional[int] = ..., bottom_items: _Optional[_Iterable[_Union[ScoredItem, _Mapping]]] = ...) -> None: ...

class ScoreItemsRequest(_message.Message):
    __slots__ = ("session_id", "clicks", "candidates", "strict", "user_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CLICKS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    STRICT_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    clicks: _containers.RepeatedScalarFieldContainer[str]
    candidates: _containers.RepeatedScalarFieldContainer[str]
    strict: bool
    user_id: str
    def __init__(self, session_id: _Optional[str] = ..., clicks: _Optional[_Iterable[str]] = ..., candidates: _Optional[_Iterable[str]] = ..., strict: _Optional[bool] = ..., user_id: _Optional[str] = ...) -> None: ...

class ScoreItemsResponse(_message.Message):
    __slots__ = ("recommendation_id", "items", "model_version", "unknown_clicks", "unknown_candidates", "source", "skipped_clicks")
    RECOMMENDATION_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_CLICKS_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_CLICKS_FIELD_NUMBER: _ClassVar[int]
    recommendation_id: str
    items: _containers.RepeatedCompositeFieldContainer[ScoredItem]
    model_version: str
    unknown_clicks: _containers.RepeatedScalarFieldContainer[str]
    unknown_candidates: _containers.RepeatedScalarFieldContainer[str]
    source: Source
    skipped_clicks: int
    def __init__(self, recommendation_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[ScoredItem, _Mapping]]] = ..., model_version: _Optional[str] = ..., unknown_clicks: _Optional[_Iterable[str]] = ..., unknown_candidates: _Optional[_Iterable[str]] = ..., source: _Optional[_Union[Source, str]] = ..., skipped_clicks: _Optional[int] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("model_version", "model_dir", "n_items", "provider", "loaded_at", "last_reload_result", "last_reload_at")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_DIR_FIELD_NUMBER: _ClassVar[int]
    N_ITEMS_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_RELOAD_RESULT_FIELD_NUMBER: _ClassVar[int]
    LAST_RELOAD_AT_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    model_dir: str
    n_items: int
    provider: str
    loaded_at: float
    last_reload_result: str
    last_reload_at: float
    def __init__(self, model_version: _Optional[str] = ..., model_dir: _Optional[str] = ..., n_items: _Optional[int] = ..., provider: _Optional[str] = ..., loaded_at: _Optional[float] = ..., last_reload_result: _Optional[str] = ..., last_reload_at: _Optional[float] = ...) -> None: ...

class CatalogueItem(_message.Message):
    __slots__ = ("item_id", "expires_at")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    expires_at: float
    def __init__(self, item_id: _Optional[str] = ..., expires_at: _Optional[float] = ...) -> None: ...

class PutItemsRequest(_message.Message):
    __slots__ = ("items", "remove_item_ids")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    REMOVE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[CatalogueItem]
    remove_item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, items: _Optional[_Iterable[_Union[CatalogueItem, _Mapping]]] = ..., remove_item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ForgetUserRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class ForgetUserResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PutItemsResponse(_message.Message):
    __slots__ = ("added", "removed", "announced")
    ADDED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    ANNOUNCED_FIELD_NUMBER: _ClassVar[int]
    added: int
    removed: int
    announced: int
    def __init__(self, added: _Optional[int] = ..., removed: _Optional[int] = ..., announced: _Optional[int] = ...) -> None: ...
