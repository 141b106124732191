"""The README's result tables are what docs/results/*.json render (scripts/render_results.py):
no benchmark runs here, only the rendering and the comparison."""

import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import render_results  # noqa: E402
from render_results import Notes, render_text  # noqa: E402

BLOCK = "intro\n<!-- results:NAME -->\nold figures\n<!-- /results:NAME -->\noutro\n"
PROVENANCE = {"command": "python scripts/x.py", "date": "2026-12-05T00:00:00+00:00"}
PROVENANCE |= {"machine": {"cpu": "CPU", "cores": 2, "memory_gib": 8.0, "gpus": []}}
PROVENANCE |= {"versions": {"python": "3.11.7", "torch": "2.14.1"}}


def write(results: Path, name: str, record: dict) -> None:
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(record))


def test_readme_and_service_doc_match_what_the_results_files_render(capsys):
    status = render_results.main(["--check"])
    out = capsys.readouterr()
    assert status == 0, f"run python scripts/render_results.py\n{out.out}{out.err}"


def test_a_missing_results_file_leaves_its_block_as_typed_with_a_warning(tmp_path):
    notes = Notes()
    text = BLOCK.replace("NAME", "bloom")
    assert render_text(text, tmp_path, notes) == text
    assert notes.warnings == ["docs/results/bloom.json missing: results:bloom left as it is"]
    assert not notes.errors


def test_a_changed_figure_makes_the_rendered_block_differ(tmp_path):
    record = json.loads((ROOT / "docs" / "results" / "baselines.json").read_text())
    text = BLOCK.replace("NAME", "baselines")
    first = render_text(text, tmp_path / "none", Notes())
    record["results"]["v-sknn"]["recall@20"] = 0.123456
    write(tmp_path, "baselines", record)
    rendered = render_text(text, tmp_path, Notes())
    assert rendered != first
    assert "| V-SKNN | 0.1235 |" in rendered
    assert rendered.startswith("intro\n<!-- results:baselines -->\n")
    assert rendered.endswith("<!-- /results:baselines -->\noutro\n")


def test_a_results_file_that_does_not_render_is_an_error(tmp_path):
    write(tmp_path, "prnn", {**PROVENANCE, "rows": "not rows"})
    notes = Notes()
    text = BLOCK.replace("NAME", "prnn")
    assert render_text(text, tmp_path, notes) == text
    assert len(notes.errors) == 1 and "prnn.json does not render" in notes.errors[0]


def test_freshness_renders_one_row_per_method_and_a_column_pair_per_profile(tmp_path):
    frozen = {"method": "frozen model", "recall@20": 0.4, "mrr@20": 0.2}
    online = {"method": "online", "recall@20": 0.6, "mrr@20": 0.1}
    rows = {"news": {"rows": [frozen, online]}, "shop": {"rows": [{**frozen, "recall@20": 0.7}]}}
    write(tmp_path, "freshness", {**PROVENANCE, "profiles": rows})
    rendered = render_text(BLOCK.replace("NAME", "freshness"), tmp_path, Notes())
    header = "| method | news, Recall@20 | news, MRR@20 | shop, Recall@20 | shop, MRR@20 |"
    assert header in rendered
    assert "| frozen model | 0.4000 | **0.2000** | **0.7000** | **0.2000** |" in rendered
    assert "| online | **0.6000** | 0.1000 | - | - |" in rendered  # no shop row: dashes
    source = "2 cores of CPU, 8 GiB, no GPU; Python 3.11.7, torch 2.14.1"
    assert source in " ".join(rendered.split())  # the source line is wrapped


def test_profiles_render_each_statistic_against_its_target(tmp_path):
    stats = [
        {"statistic": "median session length", "target": 3, "generated": 3.4, "within_20pct": True},
        {
            "statistic": "clicks per item",
            "target": 1200.0,
            "generated": 20.5,
            "within_20pct": False,
        },
        {"statistic": "sessions", "target": None, "generated": 512, "within_20pct": None},
    ]
    write(
        tmp_path, "profiles", {"machine": "a laptop", "versions": {}, "profiles": {"news": stats}}
    )
    rendered = render_text(BLOCK.replace("NAME", "profiles"), tmp_path, Notes())
    assert "| news | median session length | 3 | 3.4 | yes |" in rendered
    assert "| news | clicks per item | 1,200 | 20.5 | **no** |" in rendered
    assert "| news | sessions | - | 512 | - |" in rendered  # no real-log figure
    assert "a laptop" in rendered


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "docs" / "results").glob("*.json")))
def test_every_results_file_records_its_command_date_machine_and_versions(name):
    record = json.loads((ROOT / "docs" / "results" / f"{name}.json").read_text())
    runs = record.get("runs") if name in ("train_speed",) else [record]
    for run in runs:
        assert {"machine", "versions"} <= set(run)
        if name not in ("freshness", "profiles"):  # written by their own scripts' code
            assert {"command", "date"} <= set(run)
            assert {"python", "numpy", "pandas", "torch", "onnxruntime"} <= set(run["versions"])


def test_check_exits_non_zero_and_prints_a_diff_when_the_readme_is_stale(
    tmp_path, capsys, monkeypatch
):
    doc = tmp_path / "README.md"
    doc.write_text(BLOCK.replace("NAME", "baselines"))
    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(ROOT / "docs" / "results" / "baselines.json", results)
    monkeypatch.setattr(render_results, "DOCS", (doc,))
    assert render_results.main(["--check", "--results-dir", str(results)]) == 1
    out = capsys.readouterr().out
    assert "-old figures" in out and "+| V-SKNN |" in out
    assert doc.read_text() == BLOCK.replace("NAME", "baselines")  # --check changes nothing


def test_the_users_table_shows_the_first_click_columns_and_never_bolds_the_oracle(tmp_path):
    def row(method, value):
        part = {"recall@20": value, "mrr@20": value / 2}
        return {"method": method, "overall": part, "returning": part, "returning_first": part}

    rows = [row("gru4rec", 0.5), row("hrnn-init", 0.6), row("tastes-oracle", 0.9)]
    write(tmp_path, "users", {**PROVENANCE, "rows": rows})
    rendered = render_text(BLOCK.replace("NAME", "users"), tmp_path, Notes())
    lines = [line for line in rendered.splitlines() if line.startswith("|")]
    assert "returning, first click, MRR@20" in lines[0]
    bold = " | ".join(["**0.6000**", "**0.3000**"] * 3)
    assert lines[3] == f"| hrnn-init | {bold} |"
    assert lines[-1].startswith("| tastes-oracle (reference") and "**" not in lines[-1]
