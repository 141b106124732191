"""Popularity sampling: the empirical distribution follows popularity**alpha."""

import numpy as np
import pytest
import torch

from training.data.sampling import SampleStore, sampling_distribution


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_samples_follow_popularity_to_the_power_alpha(alpha):
    popularity = np.array([1, 10, 100, 0, 1000])
    store = SampleStore(
        popularity,
        n_sample=500,
        alpha=alpha,
        store_size=200_000,
        generator=torch.Generator().manual_seed(0),
    )
    draws = torch.cat([store.get() for _ in range(400)]).numpy()
    freq = np.bincount(draws, minlength=5) / len(draws)
    expected = popularity**alpha * (popularity > 0)
    expected = expected / expected.sum()
    assert np.abs(freq - expected).max() < 0.01
    assert freq[3] == 0  # an item never clicked is never a negative


def test_store_refills_after_handing_out_every_batch():
    store = SampleStore(np.ones(10), n_sample=4, alpha=1.0, store_size=8)
    first = [store.get().clone() for _ in range(2)]
    third = store.get()
    assert store.batches_per_refill == 2 and store.pointer == 1
    assert all(s.shape == (4,) for s in [*first, third])


def test_distribution_rejects_all_zero_popularity():
    with pytest.raises(ValueError, match="zero popularity"):
        sampling_distribution(np.zeros(3), 0.5)


def test_bucketed_lookup_equals_binary_search():
    rng = np.random.default_rng(0)
    popularity = rng.zipf(1.5, size=5_000) * (rng.random(5_000) > 0.2)  # a fifth never clicked
    store = SampleStore(popularity, n_sample=10, alpha=0.5)
    u = torch.rand(200_000, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    on_steps = store.cdf[rng.integers(0, len(store.cdf) - 1, size=1_000)]  # u exactly on a step
    u = torch.cat([u, on_steps, torch.tensor([0.0, 0.5, 1 - 2**-53], dtype=torch.float64)])
    assert torch.equal(store._inverse_cdf(u), torch.searchsorted(store.cdf, u, right=True))


def test_a_refill_in_chunks_draws_what_one_call_would_and_reuses_the_store(monkeypatch):
    from training.data import sampling

    popularity = np.arange(1, 50)
    store = SampleStore(popularity, n_sample=6, alpha=0.5, store_size=60)
    store.generator = torch.Generator().manual_seed(3)
    monkeypatch.setattr(sampling, "REFILL_CHUNK", 7)  # 60 draws in chunks of 7 (and 4)
    store.refill()
    buffer = store.store
    u = torch.rand(60, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    assert torch.equal(store.store.view(-1), torch.searchsorted(store.cdf, u, right=True))
    for _ in range(store.batches_per_refill + 1):  # past the end: a second refill
        store.get()
    assert store.store is buffer and store.pointer == 1
    assert not torch.equal(store.store.view(-1), torch.searchsorted(store.cdf, u, right=True))
