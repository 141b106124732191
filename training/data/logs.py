"""Click logs: reading, GRU4Rec-style preprocessing, the time-based split, and the
index arrays that training and evaluation run on.

A click log has one row per click with a session id, an item id (an opaque string) and a
time (Unix seconds; a Parquet timestamp column is converted to them). Files are Parquet
(.parquet), CSV (.csv) or otherwise TSV, chosen by the name in any case, ignoring a
compression suffix (clicks.csv.gz is a gzipped CSV).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

SESSION, ITEM, TIME = "SessionId", "ItemId", "Time"
USER = "UserId"  # optional: whose session it is (training.data.user_batching, HRNN)
DAY = 86_400.0
COMPRESSION = (".gz", ".bz2", ".zip", ".xz", ".zst")  # pandas decompresses these itself


class DataError(ValueError):
    """Bad input data; the message names the file and what to fix."""


def read_events(
    path: str | Path,
    session_key: str = SESSION,
    item_key: str = ITEM,
    time_key: str = TIME,
    user_key: str | None = None,
) -> pd.DataFrame:
    """Read a click log into columns SessionId (str), ItemId (str), Time (float64), and
    UserId (str) when `user_key` names a column the file has (users are optional)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty; expected a header and one row per click")
    wanted = [session_key, item_key, time_key]
    if len(set(wanted + ([user_key] if user_key else []))) < len(wanted) + bool(user_key):
        raise DataError(
            f"the session, item, time and user keys must name different columns; got "
            f"{', '.join(map(repr, wanted + ([user_key] if user_key else [])))}"
        )
    sep = _separator(path)
    if sep is None:
        df = pd.read_parquet(path)
    else:
        df = _read_text(path, sep, [session_key, item_key] + ([user_key] if user_key else []))
    missing = [c for c in wanted if c not in df.columns]
    if missing and sep is not None and len(df.columns) == 1:
        other = "\t" if sep == "," else ","
        if other in str(df.columns[0]):  # the whole header is one field: the wrong separator
            kind, suffix = ("tab", ".tsv") if other == "\t" else ("comma", ".csv")
            raise DataError(
                f"{path}: the header {df.columns[0]!r} is one field: the file is "
                f"{kind}-separated, but its name makes it read as "
                f"{'CSV' if sep == ',' else 'TSV'}; rename it to end in {suffix}"
            )
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; found "
            f"{', '.join(map(str, df.columns))}. Name the columns with "
            "--session-key/--item-key/--time-key."
        )
    with_user = user_key is not None and user_key in df.columns
    renames = {session_key: SESSION, item_key: ITEM, time_key: TIME, user_key: USER}
    df = df[wanted + ([user_key] if with_user else [])].rename(columns=renames)
    if df.empty:
        raise DataError(f"{path}: the file has a header but no clicks")
    if pd.api.types.is_datetime64_any_dtype(df[TIME]):
        # a timestamp column (Parquet's) is an instant, so its Unix seconds are unambiguous;
        # naive ones are taken as UTC, as pandas' to_datetime(unit="s") makes them
        epoch = pd.Timestamp(0, tz=df[TIME].dt.tz)
        df[TIME] = (df[TIME] - epoch) / pd.Timedelta(seconds=1)
    df[TIME] = _check_values(df, path)
    df[SESSION] = df[SESSION].astype(str)
    df[ITEM] = df[ITEM].astype(str)
    if with_user:
        # an empty UserId is an anonymous session (HRNN's user batching makes it a user of
        # one session, without history); plain GRU4Rec never reads the column
        df[USER] = df[USER].fillna("").astype(str)
    return df.reset_index(drop=True)


def _separator(path: Path) -> str | None:
    """None for Parquet, "," for CSV, else a tab: by the last suffix before any compression
    suffix, in any case."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSION:
        suffixes.pop()
    last = suffixes[-1] if suffixes else ""
    return None if last == ".parquet" else "," if last == ".csv" else "\t"


def _read_text(path: Path, sep: str, id_columns: list[str]) -> pd.DataFrame:
    # ids are opaque strings: without keep_default_na, 'NA', 'null', 'nan'... are ids like
    # any other, and only an empty (or absent) field is empty; it reads as ''
    try:
        df = pd.read_csv(path, sep=sep, dtype=dict.fromkeys(id_columns, str), keep_default_na=False)
    except pd.errors.ParserError as error:
        found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(error))
        if found is None:
            raise DataError(f"{path}: {error}") from error
        header, line, fields = found.groups()
        raise DataError(
            f"{path}, line {line}: {fields} fields, but the header has {header}; remove the "
            "extra field (quote a value that holds the separator)"
        ) from error
    if not isinstance(df.index, pd.RangeIndex):
        # pandas makes the first column(s) an index when line 2 has more fields than the
        # header, and every later column shifts by one
        fields, header = len(df.columns) + df.index.nlevels, len(df.columns)
        raise DataError(
            f"{path}, line 2: {fields} fields, but the header has {header}; remove the "
            "extra field (quote a value that holds the separator)"
        )
    return df


def _check_values(df: pd.DataFrame, path: Path) -> np.ndarray:
    """The times as float64 seconds, after refusing empty fields and times that are not a
    finite number."""
    for column in (SESSION, ITEM, TIME):
        bad = (df[column].isna() | (df[column] == "")).to_numpy()
        if bad.any():
            line = int(np.argmax(bad)) + 2  # +1 for the header, +1 for 1-based lines
            raise DataError(f"{path}, line {line}: empty {column}")
    times = pd.to_numeric(df[TIME], errors="coerce").to_numpy(dtype="float64")
    bad = ~np.isfinite(times)  # NaN and also inf: no click happens at the end of time
    if bad.any():
        line = int(np.argmax(bad)) + 2
        value = str(df[TIME].iloc[int(np.argmax(bad))])  # as written: 'inf', 'noon'
        raise DataError(
            f"{path}, line {line}: {TIME}={value!r} is not a finite number of seconds; "
            "give Unix seconds"
        )
    return times


def write_events(df: pd.DataFrame, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sep = _separator(path)  # the format read_events will read it as
    if sep is None:
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, sep=sep, index=False)


def preprocess(
    df: pd.DataFrame, min_item_support: int = 5, min_session_length: int = 2
) -> pd.DataFrame:
    """The GRU4Rec filtering: drop rare items, then sessions left too short."""
    support = df.groupby(ITEM)[ITEM].transform("size")
    df = df[support >= min_item_support]
    length = df.groupby(SESSION)[SESSION].transform("size")
    return df[length >= min_session_length].reset_index(drop=True)


def split_by_time(
    df: pd.DataFrame, test_days: float = 1.0, min_session_length: int = 2
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Sessions that end in the last `test_days` days are the test set. Test clicks on
    items unseen in training are dropped, then test sessions left too short."""
    session_end = df.groupby(SESSION)[TIME].max()
    cutoff = session_end.max() - test_days * DAY
    test_sessions = session_end.index[session_end > cutoff]
    is_test = df[SESSION].isin(test_sessions)
    train, test = df[~is_test], df[is_test]
    if train.empty or test.empty:
        raise DataError(
            f"splitting off the last {test_days} day(s) left an empty "
            f"{'training' if train.empty else 'test'} set; choose another --test-days"
        )
    test = test[test[ITEM].isin(train[ITEM].unique())]
    length = test.groupby(SESSION)[SESSION].transform("size")
    test = test[length >= min_session_length]
    return train.reset_index(drop=True), test.reset_index(drop=True)


class ItemVocab:
    """Item ids in index order and the reverse map."""

    def __init__(self, ids: np.ndarray | list[str]):
        self.ids = np.asarray(ids, dtype=object)
        self.index = {item: i for i, item in enumerate(self.ids)}
        if len(self.index) != len(self.ids):
            raise ValueError("item ids in a vocabulary must be unique")

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_events(cls, df: pd.DataFrame) -> ItemVocab:
        # first-seen order in time, like the reference's `unique()` on sorted data
        ordered = df.sort_values([TIME, SESSION], kind="stable")
        return cls(pd.unique(ordered[ITEM].to_numpy()))

    def encode(self, ids: np.ndarray | list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(indices int64, known bool); unknown ids get index -1."""
        idx = np.fromiter((self.index.get(i, -1) for i in ids), dtype=np.int64, count=len(ids))
        return idx, idx >= 0


@dataclass
class Sessions:
    """Clicks as index arrays, sessions ordered by start time, clicks in time order.

    items: int64 (n_events,); session s is items[offsets[s]:offsets[s + 1]].
    offsets: int64 (n_sessions + 1,). session_ids: object (n_sessions,).
    """

    items: np.ndarray
    offsets: np.ndarray
    session_ids: np.ndarray

    @property
    def n_sessions(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_events(self) -> int:
        return len(self.items)

    def session(self, s: int) -> np.ndarray:
        return self.items[self.offsets[s] : self.offsets[s + 1]]

    @classmethod
    def from_events(
        cls, df: pd.DataFrame, vocab: ItemVocab, unknown: str = "error", source: str = "data"
    ) -> Sessions:
        """unknown="error" raises on items outside `vocab`; "drop" removes those clicks."""
        idx, known = vocab.encode(df[ITEM].to_numpy())
        if not known.all():
            if unknown == "error":
                first = int(np.argmax(~known))
                raise DataError(
                    f"{source}, line {first + 2}: item {df[ITEM].iloc[first]!r} is not in the "
                    f"model's vocabulary ({int((~known).sum())} such clicks); filter the test "
                    "set to training items (python -m training split does)"
                )
            df, idx = df[known], idx[known]
        frame = pd.DataFrame({"s": df[SESSION].to_numpy(), "t": df[TIME].to_numpy(), "i": idx})
        start = frame.groupby("s")["t"].transform("min")
        frame = frame.assign(start=start).sort_values(["start", "s", "t"], kind="stable")
        sessions, counts = _run_lengths(frame["s"].to_numpy())
        offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return cls(frame["i"].to_numpy(np.int64), offsets, sessions)

    def check_min_length(self, source: str = "data", minimum: int = 2) -> None:
        lengths = np.diff(self.offsets)
        short = np.flatnonzero(lengths < minimum)
        if len(short):
            raise DataError(
                f"{source}: {len(short)} session(s) have fewer than {minimum} clicks "
                f"(e.g. session {self.session_ids[short[0]]!r}); a session of one click has "
                "nothing to predict. Run `python -m training split` or drop them."
            )


def _run_lengths(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    change = np.flatnonzero(values[1:] != values[:-1]) + 1
    starts = np.concatenate([[0], change])
    counts = np.diff(np.concatenate([starts, [len(values)]]))
    return values[starts], counts


def item_popularity(sessions: Sessions, n_items: int) -> np.ndarray:
    """Click counts per item index, int64 (n_items,)."""
    return np.bincount(sessions.items, minlength=n_items).astype(np.int64)
