"""Reading click logs, preprocessing, the time split, and clear errors on bad input."""

import numpy as np
import pandas as pd
import pytest

from training.data.logs import (
    DAY,
    DataError,
    ItemVocab,
    Sessions,
    item_popularity,
    preprocess,
    read_events,
    split_by_time,
    write_events,
)


def events(rows):
    return pd.DataFrame(rows, columns=["SessionId", "ItemId", "Time"])


@pytest.mark.parametrize("suffix", [".tsv", ".csv", ".parquet"])
def test_formats_round_trip_with_item_ids_kept_as_strings(tmp_path, suffix):
    df = events([("s1", "007", 1.0), ("s1", "abc", 2.0), ("s2", "007", 3.5)])
    write_events(df, tmp_path / f"log{suffix}")
    back = read_events(tmp_path / f"log{suffix}")
    assert back["ItemId"].tolist() == ["007", "abc", "007"]
    assert back["Time"].tolist() == [1.0, 2.0, 3.5]


def test_custom_column_names_are_mapped(tmp_path):
    (tmp_path / "log.csv").write_text("sid,iid,ts\n1,10,5\n1,11,6\n")
    df = read_events(tmp_path / "log.csv", "sid", "iid", "ts")
    assert list(df.columns) == ["SessionId", "ItemId", "Time"]


def test_two_keys_naming_one_column_are_refused(tmp_path):
    (tmp_path / "log.csv").write_text("sid,iid,ts\n1,10,5\n")
    with pytest.raises(DataError, match="must name different columns; got 'sid', 'ts', 'ts'"):
        read_events(tmp_path / "log.csv", "sid", "ts", "ts")
    with pytest.raises(DataError, match="'sid', 'iid', 'ts', 'sid'"):
        read_events(tmp_path / "log.csv", "sid", "iid", "ts", "sid")


def test_missing_column_error_names_the_file_and_column(tmp_path):
    (tmp_path / "log.tsv").write_text("SessionId\tItemId\n1\t2\n")
    with pytest.raises(DataError, match=r"log.tsv: missing column\(s\) Time"):
        read_events(tmp_path / "log.tsv")


def test_empty_file_and_header_only_file_are_rejected(tmp_path):
    (tmp_path / "empty.tsv").write_text("")
    (tmp_path / "header.tsv").write_text("SessionId\tItemId\tTime\n")
    with pytest.raises(DataError, match="empty"):
        read_events(tmp_path / "empty.tsv")
    with pytest.raises(DataError, match="no clicks"):
        read_events(tmp_path / "header.tsv")


def test_bad_time_value_error_names_the_line(tmp_path):
    (tmp_path / "log.tsv").write_text("SessionId\tItemId\tTime\n1\t2\t3\n1\t2\tnoon\n")
    with pytest.raises(DataError, match="line 3: Time='noon'"):
        read_events(tmp_path / "log.tsv")


def test_preprocess_drops_rare_items_then_short_sessions():
    rows = [("a", "x", t) for t in range(5)] + [("b", "x", 9), ("b", "rare", 10), ("c", "x", 11)]
    out = preprocess(events(rows), min_item_support=5, min_session_length=2)
    assert set(out.SessionId) == {"a"}  # b lost its rare click and c had one click


def test_split_puts_sessions_ending_in_the_last_day_in_test_and_filters_its_items():
    rows = [
        ("old", "a", 0),
        ("old", "b", 60),
        ("new", "a", 3 * DAY),
        ("new", "zz", 3 * DAY + 1),
        ("new", "b", 3 * DAY + 2),
        ("mid", "a", DAY),
        ("mid", "b", DAY + 5),
    ]
    train, test = split_by_time(events(rows), test_days=1)
    assert set(train.SessionId) == {"old", "mid"}
    assert test.ItemId.tolist() == ["a", "b"]  # zz was never seen in training


def test_sessions_are_ordered_by_start_time_with_clicks_in_time_order():
    df = events([("late", "a", 50), ("early", "b", 12), ("early", "a", 10), ("late", "b", 40)])
    vocab = ItemVocab(["a", "b"])
    s = Sessions.from_events(df, vocab)
    assert s.session_ids.tolist() == ["early", "late"]
    assert s.items.tolist() == [0, 1, 1, 0] and s.offsets.tolist() == [0, 2, 4]
    assert item_popularity(s, 2).tolist() == [2, 2]


def test_unknown_items_raise_or_are_dropped():
    df = events([("s", "a", 1), ("s", "new", 2), ("s", "a", 3)])
    with pytest.raises(DataError, match="line 3: item 'new' is not in the model's vocabulary"):
        Sessions.from_events(df, ItemVocab(["a"]))
    assert Sessions.from_events(df, ItemVocab(["a"]), unknown="drop").n_events == 2


def test_one_click_sessions_are_reported():
    s = Sessions.from_events(
        events([("s", "a", 1), ("t", "a", 2), ("t", "a", 3)]), ItemVocab(["a"])
    )
    with pytest.raises(DataError, match="1 session\\(s\\) have fewer than 2 clicks"):
        s.check_min_length("train.tsv")


def test_vocab_encode_marks_unknown_ids():
    idx, known = ItemVocab(["a", "b"]).encode(np.array(["b", "q"]))
    assert idx.tolist() == [1, -1] and known.tolist() == [True, False]


@pytest.mark.parametrize("tz", [None, "Europe/Berlin"])
def test_parquet_timestamp_times_become_unix_seconds(tmp_path, tz):
    seconds = [1_700_000_000.0, 1_700_000_060.5]
    times = pd.to_datetime(seconds, unit="s", utc=tz is not None)
    times = times.tz_convert(tz) if tz else times
    pd.DataFrame({"SessionId": ["s", "s"], "ItemId": ["a", "b"], "Time": times}).to_parquet(
        tmp_path / "log.parquet"
    )
    assert read_events(tmp_path / "log.parquet")["Time"].tolist() == seconds


def test_date_time_text_is_refused_as_ambiguous(tmp_path):
    (tmp_path / "log.csv").write_text("SessionId,ItemId,Time\n1,a,2024-01-05 10:00\n")
    with pytest.raises(DataError, match="line 2: Time='2024-01-05 10:00' is not a finite"):
        read_events(tmp_path / "log.csv")


@pytest.mark.parametrize("suffix", [".tsv", ".parquet"])
def test_empty_user_ids_are_anonymous_sessions_not_errors(tmp_path, suffix):
    df = events([("s", "a", 1), ("s", "b", 2), ("t", "a", 3)]).assign(UserId=["u1", "u1", None])
    write_events(df, tmp_path / f"log{suffix}")
    back = read_events(tmp_path / f"log{suffix}", user_key="UserId")
    assert back["UserId"].tolist() == ["u1", "u1", ""]


def test_na_like_ids_are_ids_and_only_an_empty_field_is_empty(tmp_path):
    ids = ["NA", "null", "None", "nan", "n/a", "#N/A"]
    rows = "".join(f"{i}\t{i}\t{t}\n" for t, i in enumerate(ids))
    (tmp_path / "log.tsv").write_text("SessionId\tItemId\tTime\n" + rows)
    df = read_events(tmp_path / "log.tsv")
    assert df["SessionId"].tolist() == ids and df["ItemId"].tolist() == ids
    (tmp_path / "empty.tsv").write_text("SessionId\tItemId\tTime\n1\ta\t1\n1\t\t2\n")
    with pytest.raises(DataError, match="line 3: empty ItemId"):
        read_events(tmp_path / "empty.tsv")


@pytest.mark.parametrize("name", ["log.csv.gz", "log.CSV", "log.Csv.BZ2", "log.tsv.gz"])
def test_format_comes_from_the_name_in_any_case_past_a_compression_suffix(tmp_path, name):
    df = events([("s1", "007", 1.0), ("s1", "abc", 2.0)])
    write_events(df, tmp_path / name)
    raw = pd.read_csv(tmp_path / name, sep="," if ".csv" in name.lower() else "\t", dtype=str)
    assert raw.shape == (2, 3)  # written with the separator its name implies
    assert read_events(tmp_path / name)["ItemId"].tolist() == ["007", "abc"]


@pytest.mark.parametrize(
    "name, text, says",
    [
        ("log.tsv", "SessionId,ItemId,Time\n1,a,1\n", "comma-separated.*end in .csv"),
        ("log.csv", "SessionId\tItemId\tTime\n1\ta\t1\n", "tab-separated.*end in .tsv"),
    ],
)
def test_a_file_with_the_other_separator_is_named_as_such(tmp_path, name, text, says):
    (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=says):
        read_events(tmp_path / name)


@pytest.mark.parametrize("value", ["inf", "-inf"])
def test_infinite_times_are_refused_with_the_line(tmp_path, value):
    (tmp_path / "log.tsv").write_text(f"SessionId\tItemId\tTime\n1\ta\t1\n1\tb\t{value}\n")
    with pytest.raises(DataError, match=f"line 3: Time='{value}' is not a finite number"):
        read_events(tmp_path / "log.tsv")


@pytest.mark.parametrize("line", [2, 4])
def test_a_row_with_an_extra_field_is_blamed_on_its_line(tmp_path, line):
    rows = ["1\ta\t1", "1\tb\t2", "2\ta\t3", "2\tb\t4"]
    rows[line - 2] += "\t9"
    (tmp_path / "log.tsv").write_text("SessionId\tItemId\tTime\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=f"log.tsv, line {line}: 4 fields, but the header has 3"):
        read_events(tmp_path / "log.tsv")
