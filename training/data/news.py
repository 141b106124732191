"""A news-portal click log: stories released all day, read within hours, never twice.

    events = generate_news(NewsProfile(), days=6, seed=0, scale=1.0).events
    # SessionId (str), ItemId (str), Time (float Unix s); ~180,000 clicks a day at scale 1

The defaults reproduce a real news portal's log (training.data.profile_stats.NEWS_TARGETS holds
its statistics; scripts/profile_stats.py compares). How it is drawn:
  * traffic: 1 + a1 cos(w(h - peak)) + a2 cos(2w(h - peak)) over the hour of day h (UTC),
    with a1, a2 set by the busiest and quietest hours' shares: a smooth daily curve with a
    broad day and a deep, short night. Session starts and story releases both follow it;
  * stories: `new_items_per_day` a day (and `warm_up_days` of them before the log), each
    with a topic, a Zipf mass by its rank among its release day's stories (the expected
    share of clicks it gets in its life) and an interest curve
    (1 - exp(-a / rise)) * exp(-(a / life)**2) over its age a, whose life is longer for the
    bigger stories (the day's top stories are read for days, the tail for hours) and whose
    rise is in proportion to its life (a big story builds up over an hour or two);
  * sessions: 2 + a discrete power law of extra clicks (median 2, mean 2.68, p99 9); gaps
    between clicks log-normal below 30 minutes (median 30 s, p90 357 s); every click is
    drawn with the weights of the 15-minute slot it falls in, so no story is clicked
    before its release;
  * prominence: a story's front-page weight is mass x interest x a log-normal factor of
    mean 1 and sigma `promotion_sigma` (1.75), redrawn every `promotion_hours` (1): editors
    move stories up and down every hour and the 'most read' box feeds on itself, so which
    live stories are read most swings from hour to hour. Last-hour and decayed next-click
    counts follow it; a model of the days before cannot (it ranks the stories that were
    prominent when it was trained), nor can it know the stories first read that day, so a
    frozen model falls far below online counts on a news day, as on the real log
    (scripts/bench_freshness.py: about 0.37 against 0.53-0.66 Recall@20 at scale 0.5; the
    real log's 0.16 against 0.56-0.62). Stronger swings (sigma 2) push the youngest
    stories' early clicks below the real log's;
  * a next click is a related link of the current story (`p_related`: one of its
    `n_related` links, mostly the first; links go to the bigger stories of the same topic
    released around the same time, and are followed when the link's story is live, with
    probability interest**`follow_power`: a link stays on the page after the front page
    has moved on, so undecayed next-click counts keep some value); a related link of the
    story before (`p_back`: the reader went back a page); a live story of the current
    topic (`p_topic`, off by default); else the front page: a live story by its weight at
    that moment. A story already read in the session is replaced by a front-page draw (a
    few tries; a session that still repeats ends there), so no session clicks a story twice.
Vectorised: one numpy step per click position; the full size (6 days, ~1.1 M clicks) takes
seconds. The same seed and scale give the same events.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .users import Readers, assign_readers

DAY = 86_400.0
HOUR = 3_600.0
SLOT = 900.0  # seconds; weights are taken at the start of each 15-minute slot
START_TIME = 1_699_920_000.0  # 2023-11-14 00:00 UTC: the log starts at a midnight


@dataclass(frozen=True)
class NewsProfile:
    """Knobs of the news generator; the defaults are tuned to the real portal's statistics
    (scripts/profile_stats.py). Counts are at scale 1 and multiplied by `scale`."""

    clicks_per_day: float = 180_000.0
    # most are tail stories: ~2,800 a day get a click that day, ~15,500 in 5 days
    new_items_per_day: float = 8_500.0
    warm_up_days: float = 3.0  # stories released before the log: day 0 starts with a front page
    n_topics: int = 30  # at scale 1; scaled too, so a topic has ~130 stories a day at any scale
    peak_hour: float = 15.0  # UTC hour of the busiest traffic
    peak_share: float = 0.068  # of a day's clicks in the busiest hour
    trough_share: float = 0.006  # and in the quietest
    # mass: the integral of (q + head_quantile)**-s over the story's bin of rank quantiles q
    # among its release day's stories ([0, 1/n] for the top one), so the top 1% of stories
    # hold the same share of the mass at any scale; 1.6: top-20 stories ~55% of a day
    zipf_exponent: float = 1.6
    head_quantile: float = 1.3e-4  # about one rank at scale 1: caps the top story's weight
    # lifetime tau of interest: `life_hours` at the reference quantile (about the median
    # story of those with 20+ clicks), times (q / reference)**-life_rank_exponent (by the
    # mass density), times log-normal noise: the day's top stories are read for days, the
    # tail for a few hours
    life_hours: float = 10.0
    life_reference_quantile: float = 0.08
    life_rank_exponent: float = 0.42
    life_spread: float = 0.3
    min_life_hours: float = 2.0
    max_life_hours: float = 120.0
    # interest decays as exp(-(age / tau)**shape): 2 keeps a story on the front page for a
    # while, then drops it within hours (the real log: 43% of a story's clicks in 6 h,
    # 95% in 24 h); 1 would be exponential, with a long tail of stale clicks
    life_shape: float = 2.0
    # interest reaches 63% of its peak `rise_hours` after release for a story of
    # `life_hours`, times (life / life_hours)**rise_life_exponent: the big, long-read
    # stories build up over hours (they are followed up and shared), the tail at once
    rise_hours: float = 0.25
    rise_life_exponent: float = 1.0
    # extra clicks after the first two: P(e) ~ (e + c)**-k; gives median 2, mean 2.68, p99 9
    length_offset: float = 3.1
    length_exponent: float = 4.5
    max_length: int = 40
    # gaps: log-normal cut at the usual 30-minute session timeout (redrawn above it);
    # with the cut, median 29 s and p90 355 s (the real log: 30 s and 357 s)
    gap_median_seconds: float = 31.0
    gap_sigma: float = 2.12
    max_gap_seconds: float = 1_800.0
    n_related: int = 5  # related links under a story
    link_mass_power: float = 3.0  # links are drawn ~ mass**power: the bigger neighbours
    link_weight_exponent: float = 2.0  # the k-th link is followed ~ k**-x: the top one most
    related_window: int = 12  # links drawn among this many neighbours either side in
    # (topic, release time) order: stories out around the same time
    # a link is followed with probability interest**follow_power: below 1, readers still
    # follow links to stories past their peak (a link stays; the front page moves on)
    follow_power: float = 0.5
    # prominence: a story's front-page weight times a log-normal factor of mean 1 and this
    # sigma, redrawn every `promotion_hours` (each story at its own phase): editors move
    # stories up and down and the 'most read' box feeds on itself, so which live stories
    # are read at a given hour cannot be told from the days before. 1.75 and hourly: the
    # frozen model ~0.15 Recall@20 below every online baseline (it was 1.0 and 2 hours:
    # only ~0.06 below); 2.0 takes the share of a story's clicks in its first hour below
    # the real log's
    promotion_sigma: float = 1.75
    promotion_hours: float = 1.0
    # most next clicks try a link; many fail (the story is past its peak) and go to the
    # front page: about a quarter of next clicks follow a link of the last story
    p_related: float = 0.85
    p_back: float = 0.08
    p_topic: float = 0.0  # off: topic draws only blur the links
    redraws: int = 8  # front-page redraws of a story already read before the session ends

    def __post_init__(self) -> None:
        problems = []
        if self.clicks_per_day <= 0 or self.new_items_per_day <= 0:
            problems.append("clicks_per_day and new_items_per_day must be positive")
        if not 0 < self.trough_share < 1 / 24 < self.peak_share < 1:
            problems.append("need 0 < trough_share < 1/24 < peak_share < 1")
        if self.p_related < 0 or self.p_back < 0 or self.p_topic < 0:
            problems.append("p_related, p_back and p_topic must not be negative")
        if self.p_related + self.p_back + self.p_topic > 1:
            problems.append("p_related + p_back + p_topic must be at most 1")
        if self.zipf_exponent <= 1 or self.head_quantile <= 0:
            problems.append("zipf_exponent must be above 1 and head_quantile positive")
        if self.follow_power <= 0 or self.promotion_sigma < 0 or self.promotion_hours <= 0:
            problems.append("follow_power and promotion_hours positive, promotion_sigma >= 0")
        if self.max_length < 2 or self.n_related < 1 or self.n_topics < 1:
            problems.append("max_length >= 2, n_related >= 1 and n_topics >= 1 needed")
        if problems:
            raise ValueError("invalid news profile: " + "; ".join(problems))


@dataclass
class NewsLog:
    """Generated clicks and the stories' latent truth (index order = item_ids).

    events: SessionId, ItemId (str), Time (float Unix s); sessions in start order.
    item_ids: (n,) str. release: (n,) Unix s. life: (n,) s. mass: (n,) Zipf weights.
    topic: (n,) int64. related: (n, n_related) int64 story indices (-1: none).
    reader_topics: with readers, {UserId: (n_tastes,) int64 topics the reader follows}."""

    events: pd.DataFrame
    item_ids: np.ndarray
    release: np.ndarray
    life: np.ndarray
    mass: np.ndarray
    topic: np.ndarray
    related: np.ndarray
    reader_topics: dict[str, np.ndarray] | None = None


def traffic(hours: np.ndarray, profile: NewsProfile) -> np.ndarray:
    """Relative traffic at hour of day `hours` (any shape), mean 1 over a day."""
    mean_share = 1 / 24
    a1 = (profile.peak_share - profile.trough_share) / (2 * mean_share)
    a2 = (profile.peak_share + profile.trough_share) / (2 * mean_share) - 1
    x = 2 * np.pi * (hours - profile.peak_hour) / 24
    return 1 + a1 * np.cos(x) + a2 * np.cos(2 * x)


def _diurnal_times(rng: np.random.Generator, n: int, t0: float, t1: float, profile: NewsProfile):
    """n sorted times in [t0, t1) with density proportional to the traffic curve."""
    edges = np.arange(t0, t1 + 60.0, 60.0)[: int((t1 - t0) // 60) + 1]  # minute bins
    weight = traffic(((edges[:-1] + 30.0 - START_TIME) % DAY) / HOUR, profile)
    cum = np.cumsum(weight)
    minute = np.searchsorted(cum, rng.random(n) * cum[-1], side="right")
    return np.sort(edges[np.minimum(minute, len(weight) - 1)] + 60.0 * rng.random(n))


def _stories(rng: np.random.Generator, profile: NewsProfile, days: float, scale: float):
    """(release, life (s), mass, topic) of every story, in release order."""
    t0 = START_TIME - profile.warm_up_days * DAY
    span_days = profile.warm_up_days + days
    n = max(int(round(profile.new_items_per_day * scale * span_days)), 2)
    release = _diurnal_times(rng, n, t0, START_TIME + days * DAY, profile)
    day = ((release - t0) // DAY).astype(np.int64)
    # rank among the release day's stories, 1 = the day's top story
    per_day = np.bincount(day)
    rank = np.empty(n, dtype=np.int64)
    first = np.concatenate([[0], np.cumsum(per_day)[:-1]])
    for lo, size in zip(first, per_day, strict=True):
        rank[lo : lo + size] = rng.permutation(size) + 1
    s, q0, n_day = profile.zipf_exponent, profile.head_quantile, per_day[day]
    lo, hi = (rank - 1) / n_day + q0, rank / n_day + q0
    mass = (lo ** (1 - s) - hi ** (1 - s)) / (s - 1)
    density = mass * n_day  # ~ (q + q0)**-s, the same at any scale
    reference = (profile.life_reference_quantile + q0) ** -s
    hours = profile.life_hours * (density / reference) ** (profile.life_rank_exponent / s)
    hours = hours * np.exp(profile.life_spread * rng.standard_normal(n))
    hours = np.clip(hours, profile.min_life_hours, profile.max_life_hours)
    topic = rng.integers(0, profile.n_topics, n)
    return release, hours * HOUR, mass, topic


def rise(life: np.ndarray, profile: NewsProfile) -> np.ndarray:
    """The interest curve's rise time (s) for a story of `life` (s)."""
    relative = life / (profile.life_hours * HOUR)
    return profile.rise_hours * HOUR * relative**profile.rise_life_exponent


def interest(age: np.ndarray, life: np.ndarray, profile: NewsProfile) -> np.ndarray:
    """(1 - exp(-a / rise)) * exp(-(a / life)**shape) in [0, 1) at age a (s), rise from
    rise(life); 0 at and before the release. life: seconds, broadcast against age."""
    a = np.maximum(age, 0.0)
    grown = -np.expm1(-a / rise(life, profile))
    return np.where(age > 0, grown * np.exp(-((a / life) ** profile.life_shape)), 0.0)


def _lifetime_clicks(life: np.ndarray, profile: NewsProfile) -> np.ndarray:
    """The interest curve's integral over all ages (s), near enough: the decay's
    life * Gamma(1 + 1/shape) less the rise's missing part, rise * 1."""
    return life * math.gamma(1.0 + 1.0 / profile.life_shape) - rise(life, profile)


def promotion(rng, story: np.ndarray, slot: np.ndarray, n_stories: int, profile: NewsProfile):
    """Prominence factors of (story, slot) entries, grouped by story with slots ascending:
    exp(sigma z - sigma**2 / 2), z standard normal, one draw per story and block of
    `promotion_hours` (blocks start at a random phase per story); all 1 when sigma is 0."""
    sigma = profile.promotion_sigma
    if sigma == 0:
        return np.ones(len(story))
    slots_per_block = profile.promotion_hours * HOUR / SLOT
    phase = rng.random(n_stories) * slots_per_block
    block = np.floor((slot + phase[story]) / slots_per_block).astype(np.int64)
    starts = np.concatenate([[True], (story[1:] != story[:-1]) | (block[1:] != block[:-1])])
    factor = np.exp(sigma * rng.standard_normal(int(starts.sum())) - sigma * sigma / 2)
    return factor[np.cumsum(starts) - 1]


class _SlotSampler:
    """Draws of a live story at a slot, overall or inside a topic, by mass x interest.

    Sparse: each story has entries only for the slots from its release until its interest
    falls below 1% of its peak. Entries sorted by group g carry keys g + (cumulative weight
    share inside g); a draw in g is a binary search for g + u."""

    def __init__(self, rng, stories: tuple, n_slots: int, profile: NewsProfile):
        release, life, mass, topic = stories
        first = np.maximum(np.ceil((release - START_TIME) / SLOT), 0).astype(np.int64)
        # until the interest is below 1/1000 of its peak
        span = life * np.log(1000.0) ** (1.0 / profile.life_shape)
        last = np.minimum(first + np.ceil(span / SLOT).astype(np.int64) + 1, n_slots)
        count = np.maximum(last - first, 0)
        story = np.repeat(np.arange(len(release)), count)
        offset = np.arange(len(story)) - np.repeat(np.cumsum(count) - count, count)
        slot = first[story] + offset
        age = START_TIME + slot * SLOT - release[story]
        per_second = mass / _lifetime_clicks(life, profile)  # mass = a story's lifetime share
        weight = per_second[story] * interest(age, life[story], profile)
        weight *= promotion(rng, story, slot, len(release), profile)
        self.n_topics = profile.n_topics
        self._any = _Groups(slot, story, weight, n_slots)
        self._topic = _Groups(slot * self.n_topics + topic[story], story, weight,
                              n_slots * self.n_topics)  # fmt: skip

    def draw(self, rng: np.random.Generator, slots: np.ndarray) -> np.ndarray:
        return self._any.draw(rng, slots)

    def weight(self, slots: np.ndarray) -> np.ndarray:
        """The live stories' total front-page weight at each slot."""
        return self._any.total[slots]

    def topic_weight(self, slots: np.ndarray, topics: np.ndarray) -> np.ndarray:
        """The total weight of the topic's live stories at the slot (broadcast)."""
        return self._topic.total[slots * self.n_topics + topics]

    def draw_topic(self, rng, slots: np.ndarray, topics: np.ndarray) -> np.ndarray:
        """A live story of the topic; -1 where the topic has none in the slot."""
        return self._topic.draw(rng, slots * self.n_topics + topics)


class _Groups:
    """Weighted draws of one entry's value inside given groups (see _SlotSampler)."""

    def __init__(self, groups: np.ndarray, values: np.ndarray, weights: np.ndarray, n: int):
        order = np.argsort(groups, kind="stable")
        groups, self.values, weights = groups[order], values[order], weights[order]
        cum = np.concatenate([[0.0], np.cumsum(weights)])
        bounds = np.searchsorted(groups, np.arange(n + 1))
        before, total = cum[bounds[:-1]], cum[bounds[1:]] - cum[bounds[:-1]]
        self.total = total
        inside = (cum[1:] - before[groups]) / np.where(total > 0, total, 1.0)[groups]
        self.keys = groups + inside

    def draw(self, rng: np.random.Generator, groups: np.ndarray) -> np.ndarray:
        u = np.minimum(rng.random(len(groups)), 1.0 - 1e-9)  # g + u must stay below g + 1
        pos = np.searchsorted(self.keys, groups + u, side="right")
        found = self.values[np.minimum(pos, len(self.values) - 1)]
        return np.where(self.total[groups] > 0, found, -1)


def generate_news(
    profile: NewsProfile | None = None,
    days: float = 6.0,
    seed: int = 0,
    scale: float = 1.0,
    readers: Readers | None = None,
) -> NewsLog:
    """Draw `days` days of news clicks (see the module docstring).

    scale multiplies the clicks and the stories a day, so statistics per click, per
    session and per story stay put while the run gets smaller. readers: who reads each
    session, with lasting topics (users.py, Readers): events gain a UserId column and
    NewsLog.reader_topics says each reader's topics; None draws exactly the log without
    them. Raises ValueError when days or scale are not positive."""
    profile = profile or NewsProfile()
    if days <= 0 or scale <= 0:
        raise ValueError(f"days={days} and scale={scale} must be positive")
    topics = max(int(round(profile.n_topics * scale)), 1)
    profile = dataclasses.replace(profile, n_topics=topics)
    rng = np.random.default_rng(seed)
    stories = _stories(rng, profile, days, scale)
    release, life, mass, topic = stories
    related = _related(rng, release, mass, topic, profile)
    lengths = _session_lengths(rng, profile, days, scale)
    starts = _diurnal_times(rng, len(lengths), START_TIME, START_TIME + days * DAY, profile)
    times = _click_times(rng, lengths, starts, profile)  # (max_length, n), sessions as given
    n_slots = int((np.nanmax(times) - START_TIME) // SLOT) + 1
    sampler = _SlotSampler(rng, stories, n_slots, profile)
    cast = None
    if readers is not None:
        day_of = ((starts - START_TIME) // DAY).astype(np.int64)
        cast = assign_readers(readers, day_of, lengths, profile.n_topics, seed)
    clicks, lengths = _draw_clicks(rng, lengths, times, sampler, stories, related, profile,
                                   None if cast is None else cast.front_page)  # fmt: skip
    n = len(lengths)
    valid = np.arange(clicks.shape[0])[:, None] < lengths[None, :]  # (max_length, n)
    session_ids = np.array([f"s{i:0{len(str(n - 1))}d}" for i in range(n)], dtype=object)
    width = max(6, len(str(len(release) - 1)))
    item_ids = np.array([f"n{i:0{width}d}" for i in range(len(release))], dtype=object)
    events = pd.DataFrame(
        {  # transposed: session by session, clicks in time order
            "SessionId": session_ids[np.nonzero(valid.T)[0]],
            "ItemId": item_ids[clicks.T[valid.T]],
            "Time": times.T[valid.T],
        }
    )
    if cast is None:
        return NewsLog(events, item_ids, release, life, mass, topic, related)
    width = len(str(len(cast.topics) - 1))
    reader_ids = np.array([f"u{i:0{width}d}" for i in range(len(cast.topics))], dtype=object)
    events["UserId"] = reader_ids[cast.reader[np.nonzero(valid.T)[0]]]
    return NewsLog(events, item_ids, release, life, mass, topic, related,
                   dict(zip(reader_ids, cast.topics, strict=True)))  # fmt: skip


def _related(rng, release, mass, topic, profile: NewsProfile) -> np.ndarray:
    """(n, n_related) links per story: of the `2 * related_window` stories nearest in
    (topic, release) order, around the topic's list, the biggest by mass (Gumbel top-k)."""
    n, w, k = len(release), profile.related_window, profile.n_related
    order = np.lexsort((release, topic))
    topic_sorted = topic[order]
    starts = np.searchsorted(topic_sorted, topic_sorted, side="left")
    sizes = np.bincount(topic_sorted, minlength=profile.n_topics)[topic_sorted]
    rank = np.arange(n) - starts
    offsets = np.concatenate([np.arange(-w, 0), np.arange(1, w + 1)])  # (2W,)
    cand = order[starts[:, None] + (rank[:, None] + offsets) % sizes[:, None]]  # (n, 2W)
    keys = profile.link_mass_power * np.log(mass[cand]) - np.log(-np.log(rng.random(cand.shape)))
    keys[cand == order[:, None]] = -np.inf  # a topic smaller than the window: not itself
    best = np.argsort(-keys, axis=1, kind="stable")[:, :k]
    related = np.empty((n, k), dtype=np.int64)
    related[order] = np.where(
        np.take_along_axis(keys, best, axis=1) > -np.inf, np.take_along_axis(cand, best, 1), -1
    )
    return related


def _session_lengths(rng, profile: NewsProfile, days: float, scale: float) -> np.ndarray:
    """Lengths 2 + e, P(e) ~ (e + offset)**-exponent, as many sessions as the clicks need."""
    extra = np.arange(profile.max_length - 1)
    pmf = (extra + profile.length_offset) ** -profile.length_exponent
    pmf /= pmf.sum()
    mean = 2.0 + float(extra @ pmf)
    n = max(int(round(profile.clicks_per_day * scale * days / mean)), 1)
    return 2 + np.searchsorted(np.cumsum(pmf), rng.random(n) * (1 - 1e-12), side="right")


def _click_times(rng, lengths: np.ndarray, starts: np.ndarray, profile: NewsProfile):
    """(max_length, n) click times: the start, then log-normal gaps below the session
    timeout; NaN past the end."""
    z = rng.standard_normal((lengths.max() - 1, len(lengths)))
    z_max = np.log(profile.max_gap_seconds / profile.gap_median_seconds) / profile.gap_sigma
    while (over := z > z_max).any():
        z[over] = rng.standard_normal(int(over.sum()))
    gaps = profile.gap_median_seconds * np.exp(profile.gap_sigma * z)
    times = starts[None, :] + np.concatenate([np.zeros((1, len(lengths))), np.cumsum(gaps, 0)])
    return np.where(np.arange(lengths.max())[:, None] < lengths[None, :], times, np.nan)


def _draw_clicks(rng, lengths, times, sampler: _SlotSampler, stories, related, profile,
                 front_page=None):  # fmt: skip
    """(clicks (max_length, n) int64, lengths (n,)) with every session's clicks distinct;
    a session that repeats after `redraws` front-page redraws ends before that click.
    front_page(rng, sampler, slots, sessions): the front-page draws of those sessions
    (default: by weight alone, whoever reads)."""
    if front_page is None:

        def front_page(rng, sampler, slots, sessions):
            return _front_page(rng, sampler, slots)

    release, life, _, topic = stories
    slots = np.where(np.isnan(times), 0, (times - START_TIME) // SLOT).astype(np.int64)
    link_weight = np.arange(1, profile.n_related + 1) ** -profile.link_weight_exponent
    link_weight /= link_weight.sum()
    n, max_length = len(lengths), int(lengths.max())
    clicks = np.full((max_length, n), -1, dtype=np.int64)
    clicks[0] = front_page(rng, sampler, slots[0], np.arange(n))
    lengths = lengths.copy()
    for t in range(1, max_length):
        live = np.flatnonzero(lengths > t)
        slot, when = slots[t, live], times[t, live]
        current, before = clicks[t - 1, live], clicks[t - 2, live] if t >= 2 else None
        u = rng.random(len(live))
        link = related[current, rng.choice(profile.n_related, len(live), p=link_weight)]
        if before is not None:
            back = related[before, rng.choice(profile.n_related, len(live), p=link_weight)]
            link = np.where(u >= profile.p_related, back, link)
        followed = u < profile.p_related + (profile.p_back if before is not None else 0.0)
        ok = followed & (link >= 0)
        chance = interest(when - release[link], life[link], profile) ** profile.follow_power
        ok &= rng.random(len(live)) < chance  # a stale or unreleased link is not clicked
        nxt = np.where(ok, link, -1)
        by_topic = ~followed & (u < profile.p_related + profile.p_back + profile.p_topic)
        nxt[by_topic] = sampler.draw_topic(rng, slot[by_topic], topic[current[by_topic]])
        front = nxt < 0
        nxt[front] = front_page(rng, sampler, slot[front], live[front])
        seen = (clicks[:t, live] == nxt).any(axis=0)
        tries = profile.redraws if t >= 2 else 1000  # a session keeps its first two clicks
        for _ in range(tries):
            if not seen.any():
                break
            again = np.flatnonzero(seen)
            nxt[again] = front_page(rng, sampler, slot[again], live[again])
            seen[again] = (clicks[:t, live[again]] == nxt[again]).any(axis=0)
        clicks[t, live] = nxt
        lengths[live[seen]] = t  # still a repeat: the session ends before it
    return clicks, lengths


def _front_page(rng, sampler: _SlotSampler, slots: np.ndarray) -> np.ndarray:
    drawn = sampler.draw(rng, slots)
    if (drawn < 0).any():
        raise ValueError("a slot has no live story: raise warm_up_days or new_items_per_day")
    return drawn
