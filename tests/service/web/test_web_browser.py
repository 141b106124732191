"""The sanity page in real headless Chromium (Debian's chromium and chromium-driver through
Selenium): click three items, see the recommendations change, mark one, find it in the
export; stop the gRPC service, see the message; start it again and go on.

Skipped when chromium or chromedriver is missing, failed instead on CI (tests/tools.py).
WEB_SCREENSHOT=docs/web.png refreshes the README's screenshot (default: a temporary file).
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from service.web.__main__ import main as web_main
from service.web.app import create_app
from service.web.config import WebConfig
from service.web.feedback import FeedbackStore, StoreFull, Verdict

WAIT_S = 15  # any one step; a healthy page takes well under a second
FILLER = "filler"  # model version of the verdicts that fill a database up


@pytest.fixture
def browser(tool) -> Iterator[object]:
    chromium, chromedriver = tool("chromium"), tool("chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1280,900", "--disable-gpu"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(chromedriver))
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


class WebServer:
    """The web front under uvicorn in a thread, on a free port of 127.0.0.1."""

    def __init__(self, config: WebConfig, store: FeedbackStore | None = None):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/"
        settings = uvicorn.Config(create_app(config, store), log_level="warning")
        self.server = uvicorn.Server(settings)
        self.thread = threading.Thread(target=self.server.run, args=([self.sock],), daemon=True)

    def __enter__(self) -> WebServer:
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                return self
            self.thread.join(0.05)
        raise RuntimeError("the web front did not start in 10 s")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def test_play_a_session_mark_an_item_and_survive_a_service_restart(browser, start_server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    wait = WebDriverWait(driver, WAIT_S)
    grpc = start_server()
    port = grpc.server.port
    db = tmp_path / "feedback.sqlite"
    config = WebConfig(grpc_targets=(grpc.target,), db=db)

    def best() -> list[str]:
        return [
            li.get_attribute("data-item")
            for li in driver.find_elements(By.CSS_SELECTOR, "#best .rec")
        ]

    def clicked() -> list[str]:
        return [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#clicks li")]

    def rec_id() -> str:
        return driver.find_element(By.ID, "session").get_attribute("data-recommendation-id")

    def click_item(item: str) -> tuple[str, list[str]]:
        """Click the item in the grid; wait for a new answer; its id and best items."""
        before = rec_id()
        wait.until(
            ec.element_to_be_clickable((By.CSS_SELECTOR, f'.item[data-item="{item}"]'))
        ).click()
        wait.until(lambda d: rec_id() not in ("", before) and len(best()) == 5)
        return rec_id(), best()

    with WebServer(config) as web:
        driver.get(web.url)
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".item")))
        assert "Sanity check" in driver.title

        # three clicks; the third item is on a later page, found through the search box
        answers = [click_item("item-003"), click_item("item-017")]
        search = driver.find_element(By.ID, "search")
        search.send_keys("item-05")
        wait.until(lambda d: d.find_element(By.ID, "page-info").text.startswith("page 1 of 1 · 10"))
        answers.append(click_item("item-051"))
        lists = [items for _, items in answers]
        assert lists[0] != lists[1] and lists[1] != lists[2], lists
        assert len(driver.find_elements(By.CSS_SELECTOR, "#worst .rec")) == 5
        assert clicked() == ["item-003", "item-017", "item-051"]

        # mark the second best item as sensible from the keyboard, wait for "saved"
        recommendation_id, items = answers[-1]
        row = driver.find_elements(By.CSS_SELECTOR, "#best .rec")[1]
        row.send_keys("y")
        wait.until(lambda d: row.get_attribute("data-saved") == "yes")
        wait.until(lambda d: "1" in d.find_element(By.CSS_SELECTOR, "#summary tbody").text)
        shot = Path(os.environ.get("WEB_SCREENSHOT") or tmp_path / "web.png")
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000

        out = tmp_path / "verdicts.json"
        assert web_main(["export-feedback", "--db", str(db), "--out", str(out)]) == 0
        (verdict,) = json.loads(out.read_text())
        assert verdict["recommendation_id"] == recommendation_id
        assert (verdict["item_id"], verdict["sensible"], verdict["shown_in"]) == (
            items[1], True, "best"
        )  # fmt: skip
        assert verdict["clicks"] == ["item-003", "item-017", "item-051"]
        assert verdict["model_version"] == grpc.client.status().model_version

        # the service goes away: a click shows the message, not a blank page
        grpc.server.stop(0)
        driver.find_element(By.CSS_SELECTOR, '.item[data-item="item-052"]').click()
        message = wait.until(ec.visibility_of_element_located((By.ID, "message")))
        assert "not answering" in message.text and grpc.target in message.text
        assert best() == items  # the last answer stays on screen

        # it comes back: the page retries by itself, then the session goes on
        start_server(port=port)
        wait.until(ec.invisibility_of_element_located((By.ID, "message")))
        wait.until(lambda d: rec_id() != recommendation_id and len(best()) == 5)
        _, after = click_item("item-053")
        assert clicked() == ["item-003", "item-017", "item-051", "item-052", "item-053"]
        assert len(after) == 5


def fill_to_the_brim(store: FeedbackStore) -> None:
    """Cap the database at its size and fill it with small filler verdicts until one does
    not fit: any larger verdict (the page's, with its UUID) then needs a page there is not."""
    pages = store.connection.execute("PRAGMA page_count").fetchone()[0]
    store.connection.execute(f"PRAGMA max_page_count={pages}")
    for i in range(10_000):
        try:
            store.save(Verdict(f"f{i}", "x", True, "best", 1, 0.0, "model", FILLER, "", ("x",)))
        except StoreFull:
            return
    raise AssertionError("the capped database never filled up")


def page_verdicts(store: FeedbackStore) -> list[dict]:
    return [row for row in store.rows() if row["model_version"] != FILLER]


def test_a_verdict_refused_for_a_full_disk_is_kept_and_saved_once_there_is_room(
    browser, start_server, tmp_path
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    wait = WebDriverWait(driver, WAIT_S)
    grpc = start_server()
    store = FeedbackStore(tmp_path / "feedback.sqlite")
    config = WebConfig(grpc_targets=(grpc.target,), db=store.path)
    with WebServer(config, store) as web:
        driver.get(web.url)
        item = '.item[data-item="item-009"]'
        wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, item))).click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#worst .rec")) == 5)
        fill_to_the_brim(store)

        row = driver.find_elements(By.CSS_SELECTOR, "#worst .rec")[0]
        row.find_element(By.CSS_SELECTOR, "button.no").click()
        message = wait.until(ec.visibility_of_element_located((By.ID, "message")))
        wait.until(lambda d: "is full" in message.text)
        assert row.get_attribute("data-saved") == "pending" and page_verdicts(store) == []

        store.connection.execute("PRAGMA max_page_count=1073741823")  # room again
        wait.until(lambda d: row.get_attribute("data-saved") == "yes")
        (verdict,) = page_verdicts(store)
        assert (verdict["item_id"], verdict["sensible"], verdict["shown_in"]) == (
            row.get_attribute("data-item"), False, "worst"
        )  # fmt: skip
        assert verdict["clicks"] == ["item-009"]
