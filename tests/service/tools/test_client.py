"""The command-line client against a real server."""

from __future__ import annotations

from service.tools.client import main


def test_the_cli_prints_ranked_recommendations_and_skipped_clicks(served_model_only, tiny, capsys):
    clicks = [tiny.item_ids[2], "zzz", tiny.item_ids[9]]
    code = main(
        [
            "--target",
            served_model_only.target,
            "--session",
            "c1",
            "--clicks",
            *clicks,
            "--top-k",
            "4",
        ]
    )
    out = capsys.readouterr().out.splitlines()
    # the same call again: the same answer only without the online layer, which learns
    expected = served_model_only.client.recommend("", clicks, top_k=4)
    assert code == 0
    assert "(model)" in out[0] and expected.model_version in out[0]
    assert out[1] == "unknown clicks skipped: zzz"
    assert [line.split()[:2] for line in out[2:]] == [
        [str(rank), it.item_id] for rank, it in enumerate(expected.items, 1)
    ]


def test_the_cli_scores_candidates(served, tiny, capsys):
    candidates = [tiny.item_ids[i] for i in (1, 2, 3)]
    code = main(
        ["--target", served.target, "--clicks", tiny.item_ids[0], "--candidates", *candidates]
    )
    lines = capsys.readouterr().out.splitlines()[1:]
    assert code == 0
    assert sorted(line.split()[1] for line in lines) == sorted(candidates)


def test_the_cli_reports_a_refused_request_and_fails(served, capsys):
    code = main(["--target", served.target, "--clicks", "a", "--top-k", "5000"])
    assert code == 1
    assert "INVALID_ARGUMENT: top_k=5000 is out of range" in capsys.readouterr().err
