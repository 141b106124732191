"""The sanity page's HTTP front against real gRPC servers (tests/service/conftest.py): the
API mirrors the service, verdicts reach the export, faults become clear messages."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.web.__main__ import main as web_main
from service.web.app import create_app
from service.web.catalogue import Catalogue
from service.web.config import WebConfig
from service.web.feedback import FeedbackStore
from service.web.images import draw, encode_png

Web = Callable[..., TestClient]


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Web]:
    """web(*targets, **config overrides) -> a TestClient whose app is started (lifespan)."""
    clients: list[TestClient] = []

    def make(*targets: str, **overrides: object) -> TestClient:
        config = WebConfig(grpc_targets=targets, db=tmp_path / "feedback.sqlite", **overrides)
        client = TestClient(create_app(config), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def recommend(client: TestClient, clicks: list[str], **extra: object) -> dict:
    body = {"session_id": "t1", "clicks": clicks, "top_k": 5, "bottom_k": 5, **extra}
    response = client.post("/api/recommend", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def verdict_for(rec: dict, clicks: list[str], rank: int = 1, sensible: bool = True) -> dict:
    item = rec["items"][rank - 1]
    return {
        "recommendation_id": rec["recommendation_id"], "item_id": item["item_id"],
        "sensible": sensible, "shown_in": "best", "rank": rank, "score": item["score"],
        "source": item["source"], "model_version": rec["model_version"], "session_id": "t1",
        "clicks": clicks,
    }  # fmt: skip


def test_page_and_openapi_schema_are_served(served, web):
    client = web(served.target)
    page = client.get("/")
    assert page.status_code == 200 and "Sanity check" in page.text
    assert client.get("/static/app.js").status_code == 200
    schema = client.get("/openapi.json").json()
    assert {"/api/recommend", "/api/score-items", "/api/feedback", "/api/items"} <= set(
        schema["paths"]
    )
    fields = schema["components"]["schemas"]["RecommendIn"]["properties"]
    assert "description" in fields["bottom_k"] and "description" in fields["clicks"]


def test_models_report_the_served_version(served, web):
    data = web(served.target).get("/api/models").json()
    status = served.client.status()
    assert data["top_k"] == 5
    assert data["models"] == [
        {"key": served.target, "target": served.target, "up": True,
         "model_version": status.model_version, "n_items": 60, "message": ""}
    ]  # fmt: skip


def test_items_are_paged_and_searchable_by_id_substring(served, web, tiny):
    client = web(served.target)
    first = client.get("/api/items", params={"limit": 7}).json()
    assert first == {"total": 60, "offset": 0, "items": tiny.item_ids[:7]}
    later = client.get("/api/items", params={"offset": 56, "limit": 10}).json()
    assert later["items"] == tiny.item_ids[56:]
    found = client.get("/api/items", params={"q": "ITEM-01"}).json()
    assert found["total"] == 10 and found["items"] == [f"item-01{i}" for i in range(10)]


def test_recommendations_mirror_the_grpc_answer_and_change_with_each_click(served, web):
    client = web(served.target)
    clicks: list[str] = []
    seen = []
    for item in ["item-003", "item-027", "item-051"]:
        clicks.append(item)
        rec = recommend(client, clicks)
        direct = served.client.recommend("", clicks, top_k=5, bottom_k=5)
        assert [i["item_id"] for i in rec["items"]] == [i.item_id for i in direct.items]
        assert [i["item_id"] for i in rec["bottom_items"]] == [
            i.item_id for i in direct.bottom_items
        ]
        assert [i["score"] for i in rec["items"]] == pytest.approx(
            [i.score for i in direct.items], rel=1e-6
        )
        assert {i["source"] for i in rec["items"] + rec["bottom_items"]} == {"model"}
        seen.append(([i["item_id"] for i in rec["items"]], rec["recommendation_id"]))
    assert len({tuple(items) for items, _ in seen}) == 3  # each click changed the list
    assert len({rid for _, rid in seen}) == 3


def test_the_page_caps_what_one_browser_teaches_however_many_sessions_it_invents(served, web, tiny):
    """The page sends the service an x-client-id made from the browser's address: 30
    fresh session ids from one browser teach its client cap (20), not 30 clicks."""
    client = web(served.target)
    for n, item in enumerate(tiny.item_ids[:30]):
        body = {"session_id": f"invented-{n}", "clicks": [item], "top_k": 5}
        assert client.post("/api/recommend", json=body).status_code == 200
    stats = served.server.guard.stats
    assert stats.learnt == 20 and stats.not_learnt["client_cap"] == 10


def test_score_items_mirrors_grpc(served, web):
    body = {"clicks": ["item-001"], "candidates": ["item-005", "nope", "item-009"]}
    data = web(served.target).post("/api/score-items", json=body).json()
    direct = served.client.score_items("", ["item-001"], ["item-005", "nope", "item-009"])
    assert [i["item_id"] for i in data["items"]] == [i.item_id for i in direct.items]
    assert data["unknown_candidates"] == ["nope"]


def test_unknown_item_is_a_400_that_names_it_unless_allowed(served, web):
    client = web(served.target)
    response = client.post("/api/recommend", json={"clicks": ["item-001", "no-such-item"]})
    assert response.status_code == 400
    assert response.json()["code"] == "unknown_items"
    assert "'no-such-item'" in response.json()["detail"]
    allowed = recommend(client, ["item-001", "no-such-item"], allow_unknown=True)
    assert allowed["unknown_clicks"] == ["no-such-item"]


def test_malformed_requests_are_400_with_a_readable_message(served, web):
    client = web(served.target)
    response = client.post("/api/recommend", json={"clicks": []})
    assert response.status_code == 400 and "clicks" in response.json()["detail"]
    response = client.post("/api/recommend", json={"clicks": ["item-001"], "model": "elsewhere"})
    assert response.status_code == 400 and served.target in response.json()["detail"]


def test_images_are_deterministic_pngs_with_cache_headers(served, web):
    client = web(served.target)
    one = client.get("/api/image", params={"item": "item-004"})
    assert one.status_code == 200 and one.headers["content-type"] == "image/png"
    assert "max-age" in one.headers["cache-control"]
    decoded = np.asarray(Image.open(io.BytesIO(one.content)).convert("RGB"))
    np.testing.assert_array_equal(decoded, draw("item-004"))  # PIL as independent decoder
    assert client.get("/api/image", params={"item": "item-004"}).content == one.content
    assert client.get("/api/image", params={"item": "item-005"}).content != one.content


def test_images_come_from_the_directory_when_given(served, web, tmp_path):
    folder = tmp_path / "pictures"
    folder.mkdir()
    own = encode_png(np.full((4, 4, 3), 200, np.uint8))
    (folder / "item-002.png").write_bytes(own)
    (tmp_path / "secret.png").write_bytes(b"not for the page")
    client = web(served.target, images=folder)
    assert client.get("/api/image", params={"item": "item-002"}).content == own
    drawn = client.get("/api/image", params={"item": "item-003"}).content
    assert drawn == encode_png(draw("item-003"))
    escape = client.get("/api/image", params={"item": "../secret"}).content
    assert escape == encode_png(draw("../secret"))


def test_a_verdict_is_in_the_export_with_its_clicks_version_and_recommendation(
    served, web, tmp_path
):
    client = web(served.target)
    clicks = ["item-010", "item-020"]
    rec = recommend(client, clicks)
    ack = client.post("/api/feedback", json=verdict_for(rec, clicks, rank=2))
    assert ack.status_code == 200 and ack.json()["stored_at"] > 0
    worst = rec["bottom_items"][0]
    body = {**verdict_for(rec, clicks), "item_id": worst["item_id"], "shown_in": "worst",
            "score": worst["score"], "sensible": False}  # fmt: skip
    assert client.post("/api/feedback", json=body).status_code == 200

    out = tmp_path / "verdicts.json"
    assert web_main(["export-feedback", "--db", str(tmp_path / "feedback.sqlite"),
                     "--out", str(out)]) == 0  # fmt: skip
    rows = json.loads(out.read_text())
    assert [(r["item_id"], r["sensible"], r["shown_in"]) for r in rows] == [
        (rec["items"][1]["item_id"], True, "best"), (worst["item_id"], False, "worst")
    ]  # fmt: skip
    for row in rows:
        assert row["recommendation_id"] == rec["recommendation_id"]
        assert row["model_version"] == served.client.status().model_version
        assert row["clicks"] == clicks
    csv_out = tmp_path / "verdicts.csv"
    assert web_main(["export-feedback", "--db", str(tmp_path / "feedback.sqlite"),
                     "--out", str(csv_out)]) == 0  # fmt: skip
    lines = csv_out.read_text().splitlines()
    assert lines[0].startswith("recommendation_id,item_id,sensible") and len(lines) == 3
    assert "item-010 item-020" in lines[1]
    download = client.get("/api/feedback/export", params={"format": "csv"})
    assert download.text.splitlines() == lines


def test_marking_an_item_again_replaces_its_verdict_and_the_summary_counts_shares(served, web):
    client = web(served.target)
    clicks = ["item-030"]
    rec = recommend(client, clicks)
    for rank, sensible in [(1, True), (2, True), (3, False), (1, False)]:  # rank 1 re-marked
        body = verdict_for(rec, clicks, rank, sensible)
        assert client.post("/api/feedback", json=body).is_success
    (row,) = client.get("/api/feedback/summary").json()
    assert row["model_version"] == rec["model_version"]
    assert (row["verdicts"], row["sensible"]) == (3, 1)
    assert row["share_sensible"] == pytest.approx(1 / 3)
    assert row["worst_verdicts"] == 0 and row["worst_share_sensible"] is None


def test_grpc_down_is_a_503_with_a_message_and_the_front_recovers_after_restart(start_server, web):
    first = start_server()
    port = first.server.port
    client = web(first.target)
    recommend(client, ["item-001"])
    assert client.get("/api/items").json()["total"] == 60
    first.server.stop(0)

    down = client.post("/api/recommend", json={"clicks": ["item-001", "item-002"]})
    assert down.status_code == 503
    assert down.json()["code"] == "upstream_unavailable"
    assert f"127.0.0.1:{port}" in down.json()["detail"] and "not answering" in down.json()["detail"]
    models = client.get("/api/models").json()["models"]
    assert models[0]["up"] is False and "not answering" in models[0]["message"]
    assert client.get("/api/items").json()["total"] == 60  # the grid stays usable

    start_server(port=port)
    deadline = time.monotonic() + 15
    while True:
        back = client.post("/api/recommend", json={"clicks": ["item-001", "item-002"]})
        if back.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert back.status_code == 200, back.text
    assert len(back.json()["items"]) == 5


def test_a_full_disk_is_a_507_and_no_acknowledged_verdict_is_lost(served, tmp_path):
    store = FeedbackStore(tmp_path / "full.sqlite")
    config = WebConfig(grpc_targets=(served.target,), db=tmp_path / "full.sqlite")
    with TestClient(create_app(config, store=store)) as client:
        clicks = ["item-040"]
        rec = recommend(client, clicks)
        assert client.post("/api/feedback", json=verdict_for(rec, clicks, 1)).status_code == 200
        # the database may not grow: the next verdict that needs a new page cannot be stored
        pages = store.connection.execute("PRAGMA page_count").fetchone()[0]
        store.connection.execute(f"PRAGMA max_page_count={pages}")
        long_clicks = [f"item-{i:03d}" for i in range(60)] * 16  # a row too big for any page
        body = {**verdict_for(rec, clicks, 2), "clicks": long_clicks}
        full = client.post("/api/feedback", json=body)
        assert full.status_code == 507
        assert full.json()["code"] == "feedback_disk_full"
        assert "full" in full.json()["detail"] and "Free disk space" in full.json()["detail"]
        stored = {(r["item_id"], len(r["clicks"])) for r in store.rows()}
        assert stored == {(rec["items"][0]["item_id"], 1)}  # the acknowledged one, only

        store.connection.execute("PRAGMA max_page_count=1073741823")  # space freed
        assert client.post("/api/feedback", json=body).status_code == 200  # the page's retry
    reopened = FeedbackStore(tmp_path / "full.sqlite")  # on disk, not just in the connection
    assert {(r["item_id"], len(r["clicks"])) for r in reopened.rows()} == {
        (rec["items"][0]["item_id"], 1), (rec["items"][1]["item_id"], 960)
    }  # fmt: skip


def test_several_services_are_offered_as_model_versions(start_server, web):
    one, two = start_server(), start_server()
    client = web(one.target, two.target)
    keys = [m["key"] for m in client.get("/api/models").json()["models"]]
    assert keys == [one.target, two.target]
    two.server.stop(0)
    assert recommend(client, ["item-001"], model=one.target)["model"] == one.target
    away = client.post("/api/recommend", json={"clicks": ["item-001"], "model": two.target})
    assert away.status_code == 503 and two.target in away.json()["detail"]


def test_a_fixed_item_list_replaces_the_exports(served, web, tmp_path):
    items = tmp_path / "items.txt"
    items.write_text("item-001\nitem-002\n\nitem-010\n")
    page = web(served.target, items=items).get("/api/items").json()
    assert page == {"total": 3, "offset": 0, "items": ["item-001", "item-002", "item-010"]}


def test_catalogue_search_is_case_insensitive_and_limits_the_page():
    catalogue = Catalogue([f"Shoe-{i}" for i in range(1000)], "test")
    assert catalogue.page("shoe-99", 0, 3) == (11, ["Shoe-99", "Shoe-990", "Shoe-991"])
    assert catalogue.page("", 990, 10_000)[1] == [f"Shoe-{i}" for i in range(990, 1000)]
    assert "Shoe-5" in catalogue and "shoe-5" not in catalogue


def test_export_without_a_database_says_so(tmp_path, capsys):
    code = web_main(["export-feedback", "--db", str(tmp_path / "none.sqlite"),
                     "--out", str(tmp_path / "x.csv")])  # fmt: skip
    assert code == 2 and "no feedback database" in capsys.readouterr().err


def test_the_web_front_runs_without_torch_onnxruntime_or_training(tmp_path):
    code = f"""
import sys
for name in ("torch", "onnxruntime", "training", "matplotlib"):
    sys.modules[name] = None  # importing any of them now raises ImportError
from pathlib import Path
from service.web.__main__ import main
from service.web.app import create_app
from service.web.config import WebConfig
create_app(WebConfig(db=Path({str(tmp_path / "f.sqlite")!r})))
loaded = [m for m in sys.modules if m.split(".")[0] in ("torch", "onnxruntime", "training")
          and sys.modules[m] is not None]
assert not loaded, loaded
for name in ("service.runtime", "service.pipeline.recommender", "service.server"):
    assert name not in sys.modules, name
print("ok")
"""
    root = Path(__file__).resolve().parents[3]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(root)},
    )  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_serving_with_a_bad_flag_says_what_to_fix(tmp_path, capsys):
    assert web_main(["--db", str(tmp_path / "f.sqlite"), "--images", str(tmp_path / "no")]) == 2
    assert "is not a directory of <item>.png files" in capsys.readouterr().err
    missing = tmp_path / "none.txt"
    assert web_main(["--db", str(tmp_path / "f.sqlite"), "--items", str(missing)]) == 2
    assert f"cannot read the item list {missing}" in capsys.readouterr().err
    assert web_main(["--db", str(tmp_path / "f.sqlite"), "--timeout-s", "0"]) == 2
    assert "--timeout-s=0.0 must be positive" in capsys.readouterr().err
    assert web_main(["--db", str(tmp_path / "f.sqlite"), "--timeout-s", "nan"]) == 2
    assert "--timeout-s=nan must be positive" in capsys.readouterr().err
    assert web_main(["--db", str(tmp_path / "f.sqlite"), "--port", "99999"]) == 2
    assert "--port 99999 is not a TCP port" in capsys.readouterr().err
    for target in ("nohostport", "127.0.0.1:99999"):
        assert web_main(["--db", str(tmp_path / "f.sqlite"), "--grpc", target]) == 2
        assert f"--grpc {target!r} must be host:port" in capsys.readouterr().err
