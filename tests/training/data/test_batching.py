"""Session-parallel mini-batches: the reference iterator's invariants."""

import numpy as np
import pytest
import torch

from training.data.batching import apply_step_to_hidden, first_batch_size, session_parallel


def simulate(lengths, batch_size):
    """Replay the steps, tracking which session each slot holds, as a model's state would."""
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = np.arange(offsets[-1])  # item = global position, so every click is unique
    session_of = np.repeat(np.arange(len(lengths)), lengths)
    pairs, resets = [], 0
    slots = None
    for step in session_parallel(items, offsets, batch_size):
        inputs, targets = step.inputs.numpy(), step.targets.numpy()
        if step.keep is not None:
            slots = slots[step.keep.numpy()]
        if step.reset is not None:
            resets += int(step.reset.sum())
            # a reset slot must start at its session's first click
            for pos in inputs[step.reset.numpy()]:
                assert pos == offsets[session_of[pos]]
        if slots is not None:
            # slots that were not reset must continue the same session
            same = np.ones(len(inputs), dtype=bool) if step.reset is None else ~step.reset.numpy()
            assert (session_of[inputs[same]] == slots[same]).all()
        slots = session_of[inputs]
        assert (targets == inputs + 1).all() and (session_of[targets] == slots).all()
        pairs.extend(zip(inputs.tolist(), targets.tolist(), strict=True))
    return offsets, pairs, resets


@pytest.mark.parametrize("batch_size", [1, 2, 3, 7, 50])
def test_every_click_but_the_last_of_each_session_is_an_input_exactly_once(batch_size):
    lengths = np.random.default_rng(1).integers(2, 9, size=23)
    offsets, pairs, _ = simulate(lengths, batch_size)
    inputs = sorted(p for p, _ in pairs)
    expected = sorted(set(range(offsets[-1])) - set((offsets[1:] - 1).tolist()))
    assert inputs == expected


def test_each_session_after_the_first_batch_starts_with_a_reset():
    lengths = [2, 5, 3, 2, 4, 6, 2]
    _, _, resets = simulate(lengths, batch_size=3)
    assert resets == len(lengths) - 3


def test_batch_shrinks_at_the_end_instead_of_padding():
    offsets = np.array([0, 2, 10], dtype=np.int64)  # one short, one long session
    sizes = [len(s.inputs) for s in session_parallel(np.arange(10), offsets, 2)]
    assert sizes[0] == 2 and sizes[-1] == 1 and sum(sizes) == 1 + 7


def test_single_click_sessions_are_skipped():
    offsets = np.array([0, 1, 3, 4, 6], dtype=np.int64)
    steps = list(session_parallel(np.arange(6), offsets, 4))
    assert first_batch_size(offsets, 4) == 2
    assert sorted(p for s in steps for p in s.inputs.tolist()) == [1, 4]


def test_apply_step_keeps_then_zeroes_rows():
    hidden = [torch.arange(8.0).view(4, 2)]
    from training.data.batching import Step

    step = Step(
        torch.zeros(2), torch.zeros(2), keep=torch.tensor([1, 3]), reset=torch.tensor([True, False])
    )
    (h,) = apply_step_to_hidden(step, hidden)
    assert h.tolist() == [[0.0, 0.0], [6.0, 7.0]]
