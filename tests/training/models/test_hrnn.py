"""HRNN: the hand-over between a user's sessions against numpy, the user-less case against
the session GRU, user-parallel batching on a hand-made layout, training and the CLI's
`evaluate --history`."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import markov_sessions
from training.__main__ import main
from training.config import Config
from training.data.logs import ItemVocab, Sessions
from training.data.user_batching import UserSessions, user_parallel, with_history
from training.data.users import users_to_dir
from training.evaluate import GRUScorer, collect_ranks
from training.evaluation.user_evaluate import HRNNScorer, collect_user_ranks
from training.fit.hrnn_fit import fit_hrnn
from training.fit.train import fit, load_model, save_model
from training.models.hrnn import HRNN


def _plan(sessions: dict[str, tuple[str, list[int]]], n_items: int = 10) -> UserSessions:
    """{session id: (user, items)}, sessions in dict order one hour apart."""
    rows = [
        (sid, str(item), 3600.0 * s + k, user)
        for s, (sid, (user, items)) in enumerate(sessions.items())
        for k, item in enumerate(items)
    ]
    df = pd.DataFrame(rows, columns=["SessionId", "ItemId", "Time", "UserId"])
    return UserSessions.from_events(df, ItemVocab([str(i) for i in range(n_items)]))


def _fixed_hrnn(**overrides) -> HRNN:
    cfg = Config(architecture="hrnn", layers=(3,), user_layer=2, **overrides)
    model = HRNN(6, cfg).eval()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.rand(p.shape, generator=gen) - 0.5)
    return model


def _numpy_gru(x, h, w_ih, w_hh, b_ih, b_hh):
    """torch.nn.GRUCell's equations, (r, z, n) gate order."""
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    gx, gh = w_ih @ x + b_ih, w_hh @ h + b_hh
    n_h = len(h)
    r = sig(gx[:n_h] + gh[:n_h])
    z = sig(gx[n_h : 2 * n_h] + gh[n_h : 2 * n_h])
    n = np.tanh(gx[2 * n_h :] + r * gh[2 * n_h :])
    return (1 - z) * n + z * h


def test_the_next_session_starts_from_tanh_of_the_init_layer_on_the_user_gru_step():
    model = _fixed_hrnn()
    plan = _plan({"a": ("u", [1, 2, 3]), "b": ("u", [4, 5])})
    hidden = model.init_hidden(1)
    with torch.no_grad():
        for step in user_parallel(plan, batch_size=1):
            if step.new_session is not None:
                assert step.last_click.tolist() == [3]  # session a's last click, never an input
                _, after = model(step.last_click, hidden)
                final = after[0][0].numpy().copy()  # the state after all of a (layer 1 = top)
                hidden = model.hand_over(hidden, step.new_session, step.new_user, step.last_click)
                started = hidden[0][0].numpy()
            _, hidden = model(step.inputs, hidden)
    cell = model.user_cell
    w = {k: v.detach().numpy() for k, v in cell.named_parameters()}
    user = _numpy_gru(
        final, np.zeros(2), w["weight_ih"], w["weight_hh"], w["bias_ih"], w["bias_hh"]
    )
    W, b = model.init_layer.weight.detach().numpy(), model.init_layer.bias.detach().numpy()
    np.testing.assert_allclose(started, np.tanh(W @ user + b), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(hidden[-1][0].numpy(), user, rtol=1e-5, atol=1e-6)


def test_sessions_without_a_user_id_are_each_a_user_of_one_session():
    plan = _plan({"a": ("", [1, 2]), "b": ("u", [3, 4]), "c": ("", [5, 6]), "d": ("u", [7, 8])})
    assert plan.n_users == 3 and plan.n_sessions == 4
    assert sorted(np.diff(plan.user_offsets).tolist()) == [1, 1, 2]  # a, c alone; u has two


def test_session_one_is_the_one_hot_gru_from_zero_by_hand():
    model = _fixed_hrnn(constrained_embedding=False)  # one-hot input: table rows
    with torch.no_grad():
        scores, hidden = model(torch.tensor([4]), model.init_hidden(1))
    gates = (model.input_gates.weight[4] + model.bias).detach().numpy()
    r, z = 1 / (1 + np.exp(-gates[:3])), 1 / (1 + np.exp(-gates[3:6]))
    h = (1 - z) * np.tanh(gates[6:] + r * 0.0)
    np.testing.assert_allclose(hidden[0][0].numpy(), h, rtol=1e-5, atol=1e-6)
    expected = model.Wy.weight.detach().numpy() @ h + model.By.weight.detach().numpy()[:, 0]
    np.testing.assert_allclose(scores[0].numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("propagation", ["init", "all"])
def test_a_user_without_history_gets_the_session_models_answer(propagation):
    model = _fixed_hrnn(user_propagation=propagation)
    plan = _plan({"a": ("new", [1, 2, 3, 4]), "b": ("other", [2, 5])})
    ranks, returning, _ = collect_user_ranks(HRNNScorer(model), plan, batch_size=2)
    as_sessions = Sessions(plan.items, plan.offsets, plan.session_ids)
    expected = collect_ranks(GRUScorer(model), as_sessions, batch_size=2)
    assert sorted(ranks.tolist()) == sorted(expected.tolist())
    assert not returning.any()
    hidden = model.hand_over(model.init_hidden(2), None, torch.tensor([True, True]))
    assert all((h == 0).all() for h in hidden)


def test_user_parallel_hands_over_resets_and_shrinks_on_a_hand_made_layout():
    plan = _plan(
        {
            "a1": ("A", [0, 1, 2]),
            "b1": ("B", [3, 4]),
            "d1": ("D", [9]),  # one click: no example, D is skipped
            "a2": ("A", [5, 6]),
            "c1": ("C", [7, 8, 7, 8]),
        }
    )
    steps = list(user_parallel(plan, batch_size=2))
    assert [s.inputs.tolist() for s in steps] == [[0, 3], [1, 7], [5, 8], [7]]
    assert [s.targets.tolist() for s in steps] == [[1, 4], [2, 8], [6, 7], [8]]
    assert [s.position.tolist() for s in steps] == [[0, 0], [1, 0], [0, 1], [2]]
    flags = [(s.new_session, s.new_user, s.keep) for s in steps]
    assert flags[0] == (None, None, None)
    assert flags[1][0] is None and flags[1][1].tolist() == [False, True]  # C takes B's slot
    assert flags[2][0].tolist() == [True, False] and flags[2][1] is None  # A's 2nd session
    assert flags[3][2].tolist() == [1] and flags[3][0] is None  # A is done: the batch shrinks
    # the hand-over reads the ended session's last click (a1's 2), which no step fed
    assert [None if s.last_click is None else s.last_click.tolist() for s in steps] == [
        None, None, [2, 0], None]  # fmt: skip
    assert [s.returning.tolist() for s in steps] == [[False, False], [False, False],
                                                     [True, False], [False]]  # fmt: skip
    assert plan.user_ids.tolist() == ["A", "B", "D", "C"]


@pytest.mark.parametrize("propagation", ["init", "all"])
def test_evaluation_hands_over_the_state_after_the_last_click_as_the_service_does(propagation):
    """The service runs every click of a session and hands over the state after the last one
    (tests/service/pipeline/test_users.py); the evaluation must score that model. Before the
    fix the hand-over got the state before the last click (the last click is only a target
    in user-parallel steps), and session b's scores differed from the service's."""
    model = _fixed_hrnn(user_propagation=propagation)
    history = pd.DataFrame({"SessionId": "a", "ItemId": ["1", "2", "3"], "Time": [0.0, 1, 2],
                            "UserId": "u"})  # fmt: skip
    test = pd.DataFrame({"SessionId": "b", "ItemId": ["4", "5", "0"], "Time": [10.0, 11, 12],
                         "UserId": "u"})  # fmt: skip
    plan = UserSessions.from_events(with_history(test, history), ItemVocab(list("012345")))
    scorer = HRNNScorer(model)
    scorer.start(1, plan.user_ids)
    got = [scorer.advance(step) for step in user_parallel(plan, batch_size=1)]
    got = torch.cat([g for g in got if len(g)])  # session b's two predictions
    with torch.no_grad():  # the service's flow: every click of a, then the user step
        hidden = model.init_hidden(1)
        for item in [1, 2, 3]:
            _, hidden = model(torch.tensor([item]), hidden)
        hidden = model.hand_over(hidden, torch.tensor([True]), None)
        expected = []
        for item in [4, 5]:
            scores, hidden = model(torch.tensor([item]), hidden)
            expected.append(scores)
        stale = model.init_hidden(1)  # the old hand-over: the state after 1 and 2 only
        for item in [1, 2]:
            _, stale = model(torch.tensor([item]), stale)
        stale_scores, _ = model(
            torch.tensor([4]), model.hand_over(stale, torch.tensor([True]), None)
        )
    torch.testing.assert_close(got, torch.cat(expected), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got[0], stale_scores[0], rtol=1e-3, atol=1e-4)


def test_training_hands_the_user_gru_the_state_after_the_sessions_last_click():
    """fit_hrnn's hand-over reads the ended session's last click first (as evaluation and the
    service do). The learning rate is tiny, so the weights seen at the hand-over are the
    initial ones to float precision; the user GRU's recorded input is compared with the
    state after all of session a's clicks, and with the one before its last click."""
    plan = _plan({"a": ("u", [1, 2, 3]), "b": ("u", [4, 5])})
    cfg = Config(architecture="hrnn", layers=(3,), user_layer=2, n_epochs=1, batch_size=1,
                 n_sample=4, learning_rate=1e-9)  # fmt: skip
    torch.manual_seed(cfg.seed)
    initial = HRNN(6, cfg).eval()  # fit_hrnn builds the same weights from the same seed
    seen = []
    original = torch.nn.GRUCell.forward

    def record(cell, x, h=None):
        seen.append(x.detach().clone())
        return original(cell, x, h)

    torch.nn.GRUCell.forward = record
    try:
        fit_hrnn(plan, 6, cfg, progress=False)
    finally:
        torch.nn.GRUCell.forward = original
    with torch.no_grad():
        hidden = initial.init_hidden(1)
        states = []
        for item in [1, 2, 3]:
            _, hidden = initial(torch.tensor([item]), hidden)
            states.append(hidden[0])
    assert len(seen) == 1  # one hand-over, the one user step
    torch.testing.assert_close(seen[0], states[2], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(seen[0], states[1], rtol=1e-3, atol=1e-4)


def test_history_sessions_build_state_but_are_not_scored():
    history = pd.DataFrame(
        {"SessionId": ["h", "h"], "ItemId": ["1", "2"], "Time": [0.0, 1.0], "UserId": ["u", "u"]}
    )
    test = history.assign(SessionId="t", Time=[10.0, 11.0])
    plan = UserSessions.from_events(with_history(test, history), ItemVocab(["1", "2"]))
    assert plan.scored.tolist() == [False, True]
    ranks, returning, positions = collect_user_ranks(HRNNScorer(_fixed_hrnn()), plan,
                                                     batch_size=4)  # fmt: skip
    assert len(ranks) == 1 and returning.tolist() == [True] and positions.tolist() == [0]


def test_fit_hrnn_trains_and_the_model_file_rebuilds_it(tmp_path):
    plan = _plan({f"s{i}": (f"u{i % 3}", [i % 6, (i + 1) % 6, (i + 3) % 6]) for i in range(12)})
    cfg = Config(
        architecture="hrnn", layers=(8,), user_layer=4, n_epochs=2, batch_size=2, n_sample=4,
        loss="bpr-max", user_propagation="all", dropout_p_user=0.1, dropout_p_init=0.1,
    )  # fmt: skip
    model, history = fit_hrnn(plan, 10, cfg, progress=False)
    assert all(np.isfinite(e.loss) for e in history.epochs) and history.epochs[0].events == 24
    save_model(tmp_path, model, cfg, ItemVocab([str(i) for i in range(10)]), np.ones(10))
    loaded = load_model(tmp_path)
    assert isinstance(loaded.model, HRNN) and loaded.config == cfg
    ranks, _, _ = collect_user_ranks(HRNNScorer(loaded.model), plan)
    again, _, _ = collect_user_ranks(HRNNScorer(model), plan)
    np.testing.assert_array_equal(ranks, again)


def test_evaluate_with_history_reports_returning_users_for_hrnn_and_gru4rec(tmp_path, capsys):
    data = users_to_dir(tmp_path / "d", test_days=2.0, n_users=60, n_items=80, days=8.0)
    train, test = str(data["train"]), str(data["test"])
    small = ["--param", "layers=8", "--param", "n_epochs=1", "--param", "n_sample=16"]
    for name, extra in [("hrnn", ["--param", "architecture=hrnn", "--param", "user_layer=4"]),
                        ("gru", [])]:  # fmt: skip
        main(["train", "--train", train, "--out", str(tmp_path / name), "--quiet", *small, *extra])
    results = {}
    for name in ("hrnn", "gru"):
        out = tmp_path / f"{name}.json"
        main(["evaluate", "--model", str(tmp_path / name), "--test", test, "--history", train,
              "--json", str(out), "--cutoffs", "20"])  # fmt: skip
        results[name] = json.loads(out.read_text())
    plain = tmp_path / "plain.json"
    main(["evaluate", "--model", str(tmp_path / "gru"), "--test", test, "--json", str(plain)])
    for r in results.values():
        assert set(r["returning"]) >= {"recall@20", "mrr@20", "n_events"}
        assert 0 < r["returning"]["n_events"] <= r["n_events"]
    assert results["hrnn"]["returning"]["n_events"] == results["gru"]["returning"]["n_events"]
    for r in results.values():  # the first targets of returning users' sessions, a subset
        first = r["returning_first"]["n_events"]
        assert 0 < first < r["returning"]["n_events"]
    assert (results["hrnn"]["returning_first"]["n_events"]
            == results["gru"]["returning_first"]["n_events"])  # fmt: skip
    # GRU4Rec ignores the history: its overall figures are the plain evaluation's
    assert results["gru"]["recall@20"] == pytest.approx(json.loads(plain.read_text())["recall@20"])


def test_the_session_parallel_fit_refuses_an_hrnn_config():
    with pytest.raises(ValueError, match="user-parallel"):
        fit(markov_sessions(10, 20, seed=0), 10, Config(architecture="hrnn", n_epochs=1))
