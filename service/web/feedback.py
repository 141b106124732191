"""The verdicts: which shown item a person found sensible, stored durably in SQLite.

    store = FeedbackStore(Path("feedback.sqlite"))
    store.save(Verdict(...))             # returns once the verdict is committed to disk
    rows = store.rows(); store.summary()
    write_export(store, Path("verdicts.csv"))     # or .json

One verdict per (recommendation, item): marking the same item again replaces the earlier
verdict, so a page that retries after a lost answer stores nothing twice. The journal is
WAL with synchronous=FULL, so a verdict whose save() returned survives a crash or a power
cut; save() raises StoreFull when the disk (or the database's page limit) is full and
StoreError for other failures, and in both cases nothing was stored.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS verdicts (
    recommendation_id TEXT NOT NULL,  -- RecommendResponse.recommendation_id
    item_id TEXT NOT NULL,
    sensible INTEGER NOT NULL,        -- 1 sensible, 0 not
    shown_in TEXT NOT NULL,           -- 'best' or 'worst' list
    rank INTEGER NOT NULL,            -- 1-based within its list
    score REAL NOT NULL,
    source TEXT NOT NULL,             -- model, popularity, online, blend
    model_version TEXT NOT NULL,
    session_id TEXT NOT NULL,
    clicks TEXT NOT NULL,             -- JSON array of the session's clicks, oldest first
    created_at REAL NOT NULL,         -- Unix seconds when stored
    PRIMARY KEY (recommendation_id, item_id)
)
"""


class StoreError(Exception):
    """The verdict was not stored; the message says why and what to do."""


class StoreFull(StoreError):
    """The disk or the database's size limit is full."""


@dataclass(frozen=True)
class Verdict:
    recommendation_id: str
    item_id: str
    sensible: bool
    shown_in: str  # 'best' or 'worst'
    rank: int
    score: float
    source: str
    model_version: str
    session_id: str
    clicks: tuple[str, ...]
    created_at: float = 0.0  # set by save()


COLUMNS = tuple(f.name for f in fields(Verdict))


class FeedbackStore:
    """One SQLite connection shared by the web front's threads (a lock around each use)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self.connection.execute("PRAGMA journal_mode=WAL")
            self.connection.execute("PRAGMA synchronous=FULL")  # fsync at every commit
            self.connection.execute("PRAGMA busy_timeout=5000")  # exporting while serving
            self.connection.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as err:
            raise StoreError(
                f"cannot open the feedback database {path} ({err}); give a writable --db file"
            ) from None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self.connection.close()

    def save(self, verdict: Verdict) -> Verdict:
        """Store (or replace) the verdict and commit; returns it with created_at set.
        Raises StoreFull or StoreError, after which nothing of it is stored."""
        stored = Verdict(**{**asdict(verdict), "created_at": time.time()})
        row = asdict(stored)
        row["sensible"] = int(stored.sensible)
        row["clicks"] = json.dumps(list(stored.clicks))
        columns = ", ".join(COLUMNS)
        marks = ", ".join(f":{c}" for c in COLUMNS)
        with self._lock:
            try:
                self.connection.execute("BEGIN IMMEDIATE")
                self.connection.execute(
                    f"INSERT OR REPLACE INTO verdicts ({columns}) VALUES ({marks})", row
                )
                self.connection.execute("COMMIT")
            except sqlite3.Error as err:
                self._roll_back()
                raise _store_error(err, self.path) from None
        return stored

    def _roll_back(self) -> None:
        if self.connection.in_transaction:
            # SQLite may have rolled back itself already (e.g. on SQLITE_FULL)
            with contextlib.suppress(sqlite3.Error):
                self.connection.execute("ROLLBACK")

    def rows(self) -> list[dict[str, Any]]:
        """Every verdict, oldest first, as dicts with COLUMNS (clicks a list, sensible a
        bool)."""
        with self._lock:
            cursor = self.connection.execute(
                f"SELECT {', '.join(COLUMNS)} FROM verdicts ORDER BY created_at, rowid"
            )
            found = cursor.fetchall()
        out = []
        for values in found:
            row = dict(zip(COLUMNS, values, strict=True))
            row["sensible"] = bool(row["sensible"])
            row["clicks"] = json.loads(row["clicks"])
            out.append(row)
        return out

    def summary(self) -> list[dict[str, Any]]:
        """Per model version: verdicts, sensible ones and their share, for the best and the
        worst lists together and apart."""
        query = """
            SELECT model_version, COUNT(*), SUM(sensible),
                   SUM(shown_in = 'best'), SUM(sensible AND shown_in = 'best'),
                   SUM(shown_in = 'worst'), SUM(sensible AND shown_in = 'worst')
            FROM verdicts GROUP BY model_version ORDER BY model_version
        """
        with self._lock:
            found = self.connection.execute(query).fetchall()
        return [
            {
                "model_version": version,
                "verdicts": n,
                "sensible": ok,
                "share_sensible": ok / n,
                "best_verdicts": n_best,
                "best_share_sensible": ok_best / n_best if n_best else None,
                "worst_verdicts": n_worst,
                "worst_share_sensible": ok_worst / n_worst if n_worst else None,
            }
            for version, n, ok, n_best, ok_best, n_worst, ok_worst in found
        ]


def _store_error(err: sqlite3.Error, path: Path) -> StoreError:
    text = str(err)
    if isinstance(err, sqlite3.OperationalError) and "full" in text:
        return StoreFull(
            f"The verdict was not saved: the feedback database {path} is full ({text}). "
            "Free disk space there; the page keeps the verdict and saves it again on its own."
        )
    return StoreError(
        f"The verdict was not saved: the feedback database {path} failed ({text}). "
        "The page keeps the verdict and tries again; if this lasts, check the file."
    )


def render(rows: list[dict[str, Any]], fmt: str) -> str:
    """Verdicts (FeedbackStore.rows()) as CSV, clicks joined by spaces, or as JSON, a list of
    objects."""
    if fmt == "json":
        return json.dumps(rows, indent=1) + "\n"
    if fmt != "csv":
        raise ValueError(f"unknown export format {fmt!r}; use csv or json")
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "clicks": " ".join(row["clicks"])})
    return out.getvalue()


def write_export(store: FeedbackStore, out: Path, fmt: str | None = None) -> int:
    """Write every verdict to out; fmt "csv" or "json", by default from out's suffix.
    Returns the number written."""
    fmt = fmt or out.suffix.lstrip(".").lower()
    if fmt not in ("csv", "json"):
        raise ValueError(f"cannot tell the format of {out}; name it .csv or .json, or --format")
    rows = store.rows()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(rows, fmt), encoding="utf-8")
    return len(rows)
