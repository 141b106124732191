"""training.data.news: a story's prominence moves in blocks of `promotion_hours` around its
interest curve (factors of mean 1, one per story and block), which makes its clicks jump
from one block to the next far more than with the factors off; links to stories past their
peak are followed more often with follow_power below 1."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from training.data.news import HOUR, NewsProfile, generate_news, promotion


def test_promotion_factors_have_mean_one_and_change_only_between_blocks():
    profile = NewsProfile(promotion_sigma=1.0, promotion_hours=2.0)
    n_stories, n_slots = 4_000, 24  # 24 slots of 15 minutes: 6 hours, 3 or 4 blocks a story
    story = np.repeat(np.arange(n_stories), n_slots)
    slot = np.tile(np.arange(n_slots), n_stories)
    factor = promotion(np.random.default_rng(0), story, slot, n_stories, profile)
    assert abs(factor.mean() - 1) < 0.05  # exp(sigma z - sigma**2 / 2): mean 1
    per_story = factor.reshape(n_stories, n_slots)
    changes = (np.diff(per_story, axis=1) != 0).sum(axis=1)
    # 6 hours of 2-hour blocks: 2 or 3 block ends, at each story's own phase
    assert set(changes) <= {2, 3} and len(set(changes)) == 2
    assert np.median(np.abs(np.log(per_story[:, -1] / per_story[:, 0]))) > 0.5
    off = dataclasses.replace(profile, promotion_sigma=0.0)
    assert (promotion(np.random.default_rng(0), story, slot, n_stories, off) == 1).all()


def _block_jumps(events: pd.DataFrame, hours: float = 2.0, min_clicks: int = 300) -> float:
    """Median over the busiest stories of the spread of log click ratios between
    consecutive `hours` windows (counts + 1)."""
    window = (events.Time // (hours * HOUR)).astype(np.int64)
    counts = events.assign(w=window).groupby(["ItemId", "w"]).size()
    spreads = []
    for _, c in counts.groupby(level="ItemId"):
        if c.sum() < min_clicks:
            continue
        windows = c.index.get_level_values(1)
        c = c.droplevel(0).reindex(range(windows.min(), windows.max() + 1), fill_value=0)
        ratios = np.diff(np.log(c.to_numpy() + 1.0))
        if len(ratios) >= 3:
            spreads.append(np.std(ratios))
    return float(np.median(spreads))


def test_prominence_makes_a_storys_clicks_jump_between_blocks():
    def events(sigma: float) -> pd.DataFrame:
        # 2-hour blocks, as _block_jumps' windows: the default's hourly blocks would
        # blur inside them
        profile = NewsProfile(promotion_sigma=sigma, promotion_hours=2.0)
        return generate_news(profile, days=2, seed=3, scale=0.1).events

    smooth, promoted = _block_jumps(events(0.0)), _block_jumps(events(1.0))
    assert promoted > 1.3 * smooth, (smooth, promoted)


def test_links_past_their_peak_are_followed_more_below_follow_power_one():
    def followed(power: float) -> float:
        log = generate_news(NewsProfile(follow_power=power), days=2, seed=1, scale=0.05)
        items = log.events.ItemId.str[1:].astype(int).to_numpy()
        same = log.events.SessionId.to_numpy()
        same = same[1:] == same[:-1]
        prev, nxt = items[:-1][same], items[1:][same]
        return float((log.related[prev] == nxt[:, None]).any(axis=1).mean())

    assert followed(0.5) > followed(1.0) + 0.03
