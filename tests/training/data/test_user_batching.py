"""with_history: the test clicks after their users' history, and clear errors when a file
has no user ids (it used to end an HRNN's training with KeyError 'UserId')."""

import pandas as pd
import pytest

from training.data.logs import DataError
from training.data.user_batching import SCORED, with_history


def _clicks(session: str, times: list[float], user: str | None = "u") -> pd.DataFrame:
    frame = pd.DataFrame({"SessionId": session, "ItemId": ["1", "2"], "Time": times})
    return frame if user is None else frame.assign(UserId=user)


def test_the_users_history_comes_first_and_is_not_scored():
    frame = with_history(_clicks("t", [10.0, 11.0]), _clicks("h", [0.0, 1.0]))
    assert frame.SessionId.tolist() == ["h", "h", "t", "t"]
    assert frame[SCORED].tolist() == [False, False, True, True]


@pytest.mark.parametrize("history", [None, _clicks("h", [0.0, 1.0])])
def test_a_test_file_without_user_ids_is_named_with_what_to_pass(history):
    with pytest.raises(DataError, match=r"test.tsv: no UserId column.*--user-key"):
        with_history(_clicks("t", [10.0, 11.0], user=None), history, "test.tsv")


def test_a_history_without_user_ids_is_named_with_what_to_pass():
    with pytest.raises(DataError, match=r"train.tsv: no UserId column.*--user-key"):
        with_history(_clicks("t", [10.0, 11.0]), _clicks("h", [0.0, 1.0], None), "t", "train.tsv")
