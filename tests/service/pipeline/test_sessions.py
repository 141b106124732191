"""The session state cache: bounds, idle expiry, what it resumes, and that answers with
and without it are identical over gRPC."""

from __future__ import annotations

import numpy as np
import pytest

from service.pipeline.sessions import ENTRY_OVERHEAD_BYTES, SessionCache, SessionState, make_entry


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def entry(clicks: list[int], tag: float = 0.0) -> SessionState:
    before = np.full((1, 3), tag, dtype=np.float32)
    return make_entry(np.array(clicks), before, before + 1)


def test_least_recently_used_session_is_evicted_beyond_the_size_bound():
    cache = SessionCache(max_entries=2, ttl_s=100)
    cache.put("a", entry([1]))
    cache.put("b", entry([2]))
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("c", entry([3]))
    assert len(cache) == 2
    assert cache.get("b") is None
    assert cache.get("a") is not None and cache.get("c") is not None


def test_entries_expire_after_the_idle_time_and_use_refreshes_them():
    clock = FakeClock()
    cache = SessionCache(max_entries=10, ttl_s=30, clock=clock)
    cache.put("a", entry([1]))
    cache.put("b", entry([2]))
    clock.now = 20
    assert cache.get("a") is not None  # a used at 20, b last at 0
    clock.now = 40
    assert cache.get("b") is None
    assert cache.get("a") is not None
    cache.put("c", entry([3]))  # a put also sweeps expired entries from the front
    clock.now = 75
    cache.put("d", entry([4]))
    assert len(cache) == 1


def test_a_size_of_zero_disables_the_cache():
    cache = SessionCache(max_entries=0, ttl_s=30)
    cache.put("a", entry([1]))
    assert len(cache) == 0 and cache.get("a") is None


def test_resume_reruns_only_the_last_click_for_a_repeat_and_only_new_clicks_for_an_extension():
    cache = SessionCache(max_entries=10, ttl_s=30)
    cache.put("s", entry([4, 5, 6], tag=7.0))
    repeat = cache.resume("s", np.array([4, 5, 6]))
    assert (repeat.start, repeat.hit) == (2, True)
    assert repeat.state is not None and repeat.state[0, 0] == 7.0  # state before the last click
    extended = cache.resume("s", np.array([4, 5, 6, 9, 1]))
    assert (extended.start, extended.hit) == (3, True)
    assert extended.state is not None and extended.state[0, 0] == 8.0  # state after all three


def test_resume_recomputes_when_the_history_diverges_shrinks_or_is_unknown():
    cache = SessionCache(max_entries=10, ttl_s=30)
    cache.put("s", entry([4, 5, 6]))
    for clicks, session in (([4, 9, 6, 1], "s"), ([4, 5], "s"), ([4, 5, 6], "other")):
        resume = cache.resume(session, np.array(clicks))
        assert (resume.start, resume.state, resume.hit) == (0, None, False)


def test_a_sliding_window_of_the_latest_clicks_resumes_from_the_cached_state():
    cache = SessionCache(max_entries=10, ttl_s=30)
    window = list(range(100, 300))  # a session longer than the 200-click request limit
    before = np.full((1, 3), 7.0, dtype=np.float32)
    cache.put("s", make_entry(np.array(window), before, before + 1, full=True))
    slid = cache.resume("s", np.array(window[1:] + [5]), full=True)  # oldest dropped, one new
    assert (slid.start, slid.hit) == (199, True)
    assert slid.state is not None and slid.state[0, 0] == 8.0  # after the whole session
    jumped = cache.resume("s", np.array(window[3:] + [5, 6, 7]), full=True)  # three calls
    assert (jumped.start, jumped.hit) == (197, True)
    same_window_shrunk = cache.resume("s", np.array(window[1:]), full=True)  # nothing new
    assert same_window_shrunk.hit is False


def test_short_sessions_never_resume_by_a_chance_overlap():
    cache = SessionCache(max_entries=10, ttl_s=30)
    cache.put("s", entry([1, 15, 43, 31, 22, 15]))
    assert cache.resume("s", np.array([15, 43, 31, 22, 15])).hit is False  # ends on 15 too


def test_the_byte_bound_evicts_the_least_recently_used_sessions():
    one = entry(list(range(10)))
    per_entry = one.nbytes + 50  # key strings are about 50 bytes
    cache = SessionCache(max_entries=1000, ttl_s=30, max_bytes=3 * per_entry)
    for name in "abcde":
        cache.put(name, entry(list(range(10))))
    assert len(cache) == 3 and cache.nbytes <= 3 * per_entry
    assert cache.get("a") is None and cache.get("e") is not None
    cache.put("e", entry(list(range(200))))  # a longer session costs more bytes
    assert cache.nbytes <= 3 * per_entry and cache.get("e") is not None


def test_the_byte_estimate_matches_what_the_entries_really_take():
    """The documented cost per session comes from here: 100 hidden units, 6 clicks."""
    import tracemalloc

    rng = np.random.default_rng(0)
    states = [rng.standard_normal((1, 100)).astype(np.float32) for _ in range(2)]
    cache = SessionCache(max_entries=100_000, ttl_s=30)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for n in range(20_000):
        clicks = rng.integers(0, 40_000, 6)
        cache.put(f"session-{n:08d}", make_entry(clicks, states[0], states[1]))
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    per_session = used / len(cache)
    assert cache.nbytes / len(cache) == pytest.approx(per_session, rel=0.25)
    assert ENTRY_OVERHEAD_BYTES < per_session < 2000  # about 1.3 KB, as config.py says


def replay(client, sessions: list[list[str]], prefix: str) -> list[tuple]:
    """Interleaved click-by-click replay plus some repeats, rewrites and ScoreItems calls;
    returns everything that should not depend on the cache."""
    answers = []
    longest = max(len(s) for s in sessions)
    for t in range(longest):
        for n, clicks in enumerate(sessions):
            if t >= len(clicks):
                continue
            sid = f"{prefix}-{n}"
            history = clicks[: t + 1]
            calls = [client.recommend(sid, history, top_k=7)]
            if t % 3 == 2:  # the same clicks again, then a history that does not extend
                calls.append(client.score_items(sid, history, clicks))
                calls.append(client.recommend(sid, history[1:], top_k=7))
            answers += [
                ([i.item_id for i in c.items], [i.score for i in c.items], c.source) for c in calls
            ]
    return answers


def test_answers_are_identical_with_and_without_the_cache(start_model_only_server, tiny):
    rng = np.random.default_rng(3)
    ids = tiny.item_ids + ["unknown-1"]
    sessions = [list(rng.choice(ids, size=int(rng.integers(2, 12)))) for _ in range(8)]
    # online layer off: its scores move with the clock, so two servers' blends differ in the
    # last bits even from the same calls
    cached = start_model_only_server(cache_size=1000)
    uncached = start_model_only_server(cache_size=0)
    with_cache = replay(cached.client, sessions, "a")
    without = replay(uncached.client, sessions, "a")
    assert with_cache == without  # item ids and float scores bit for bit
    assert len(cached.server.handlers.engine.cache) == len(sessions)
    assert len(uncached.server.handlers.engine.cache) == 0
    hits = cached.server.metrics.registry.get_sample_value("recsys_session_cache_hits_total")
    assert hits is not None and hits > len(with_cache) / 2  # the cached path did run
