"""The items a shopper can click: ids in the model's order, searchable and paged.

    catalogue = Catalogue.read(Path("runs/demo-export/items.txt"))
    total, ids = catalogue.page(query="12", offset=0, limit=48)

Tens of thousands of ids fit in memory; a substring search over them is a linear scan of a
few milliseconds, which is plenty for one person at a page.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

ITEMS_FILE = "items.txt"  # as in an export directory (service/runtime.py)
MAX_PAGE = 500  # items per page at most


class CatalogueError(Exception):
    """The item list cannot be read; the message says which file and what to do."""


class Catalogue:
    """The model's item ids in its index order; `source` says where they came from."""

    def __init__(self, ids: Sequence[str], source: str):
        self.ids = tuple(ids)
        self.source = source
        self._known = frozenset(self.ids)
        self._lower = [item.lower() for item in self.ids]  # searched case-insensitively

    @classmethod
    def read(cls, path: Path) -> Catalogue:
        """One id a line (blank lines skipped). Raises CatalogueError."""
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise CatalogueError(
                f"cannot read the item list {path} ({err}); give a file of item ids, one a "
                "line, with --items"
            ) from None
        ids = tuple(line.strip() for line in text.splitlines() if line.strip())
        return cls(ids, str(path))

    @classmethod
    def from_export(cls, model_dir: str) -> Catalogue:
        """The items.txt of an export directory, as Status reports it (same machine or a
        shared volume). Raises CatalogueError."""
        if not model_dir:
            raise CatalogueError(
                "the service did not report its model directory; give the item list with --items"
            )
        return cls.read(Path(model_dir) / ITEMS_FILE)

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, item: object) -> bool:
        return item in self._known

    def page(self, query: str = "", offset: int = 0, limit: int = 48) -> tuple[int, list[str]]:
        """(number of ids containing query, case-insensitive, and the ids
        offset..offset+limit-1 of them in catalogue order). limit is capped at MAX_PAGE."""
        limit = max(0, min(limit, MAX_PAGE))
        offset = max(0, offset)
        needle = query.strip().lower()
        if not needle:
            return len(self.ids), list(self.ids[offset : offset + limit])
        matches = [item for item, low in zip(self.ids, self._lower, strict=True) if needle in low]
        return len(matches), matches[offset : offset + limit]
