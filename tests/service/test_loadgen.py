"""The load generator stops at its bounds and counts what happened."""

from __future__ import annotations

import pytest

from service.loadgen import main, read_items, run_load


def test_the_run_stops_after_the_requested_number_of_calls(served, tiny):
    items = read_items(str(tiny.export_dir / "items.txt"))
    result = run_load(served.target, items, calls=40, concurrency=3, duration_s=60)
    summary = result.summary()
    assert items == tiny.item_ids
    assert (summary["calls"], summary["errors"]) == (40, 0)
    assert 0 < summary["p50_ms"] <= summary["p90_ms"] <= summary["p99_ms"]
    served_calls = served.server.metrics.registry.get_sample_value(
        "recsys_requests_total", {"method": "Recommend", "code": "OK"}
    )
    assert served_calls == 40


def test_the_run_stops_at_the_deadline_when_calls_remain(served, tiny):
    items = read_items(str(tiny.export_dir / "items.txt"))
    result = run_load(served.target, items, calls=10**9, concurrency=2, duration_s=0.5)
    assert 0 < result.calls < 10**9


def test_failed_calls_are_counted_by_status_code(served, capsys, tmp_path):
    items = tmp_path / "items.txt"
    items.write_text("a\n")  # one item, so top_k=5000 is refused every time
    code = main(["--target", served.target, "--items-file", str(items), "--calls", "5",
                 "--concurrency", "1", "--top-k", "5000", "--json"])  # fmt: skip
    assert code == 1
    assert '"error_codes": {"INVALID_ARGUMENT": 5}' in capsys.readouterr().out


def test_nonsense_bounds_are_refused():
    with pytest.raises(ValueError, match="must be positive"):
        run_load("127.0.0.1:1", ["a"], calls=0, concurrency=1, duration_s=1)
