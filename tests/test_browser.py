"""The `tuneforge serve` page in a real headless Chromium (Playwright): model card, curves, a text prediction with
probability bars, NER highlighting, multi-label chips and an image upload. Screenshots go to $TUNEFORGE_ARTIFACTS
(or a pytest tmp folder). Skips with the reason when Playwright or /usr/bin/chromium is missing."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from tuneforge.serve import ServeSettings, build_service
from tuneforge.serve.app import create_app

pytest_plugins = ["ship_runs"]

CHROMIUM = os.environ.get("TUNEFORGE_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set TUNEFORGE_CHROMIUM)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    d = Path(os.environ.get("TUNEFORGE_ARTIFACTS") or tmp_path_factory.mktemp("artifacts"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture()
def open_page(browser, live_server):
    """open_page(run_dir) → (page, base URL) with the page loaded and its model card rendered."""
    stack = []

    def go(run_dir):
        s = ServeSettings()
        server = live_server(create_app(build_service(run_dir, s), s))
        url = server.__enter__()
        stack.append(server)
        page = browser.new_page(viewport={"width": 1200, "height": 820})
        page.goto(url + "/")
        page.wait_for_selector("body[data-ready='1']", timeout=15000)
        return page, url

    yield go
    for server in stack:
        server.__exit__(None, None, None)


def api(url: str, **kwargs) -> dict:
    return httpx.post(url + "/predict", timeout=30, **kwargs).json()["predictions"][0]


def test_text_prediction_with_bars_and_model_card(open_page, ship_run, artifacts):
    page, url = open_page(ship_run("text"))
    assert page.inner_text("#facts").count("classification") == 1
    assert "accuracy (kept model's metric)" in page.inner_text("#val-metrics")
    page.wait_for_selector("#curves svg polyline")
    assert page.locator("#curves svg").count() == 2  # the validation metric and the losses
    page.click("#predict-btn")  # nothing typed: a message, no request
    assert page.inner_text("#error") == "type a text first"

    text = "the movie was good and the music was lovely"
    page.fill("#text-a", text)
    page.click("#predict-btn")
    page.wait_for_selector("#top-label")
    expected = api(url, json={"inputs": [text]})
    assert page.inner_text("#top-label") == expected["label"]
    assert page.is_hidden("#error")
    bars = page.locator(".prob-bar")
    assert bars.count() == 2
    shown = {bars.nth(i).get_attribute("aria-label"): float(bars.nth(i).get_attribute("aria-valuenow"))
             for i in range(2)}
    assert shown == pytest.approx(expected["probabilities"])
    widths = {name: page.locator(f".prob-row[data-label='{name}'] .prob-bar").bounding_box()["width"]
              for name in shown}
    assert widths[expected["label"]] > min(widths.values())  # the bars are drawn to scale
    page.screenshot(path=str(artifacts / "serve_text.png"), full_page=True)


def test_ner_entities_are_highlighted(open_page, ship_run, artifacts):
    page, url = open_page(ship_run("ner"))
    text = "the movie was good but the ending was awful"
    page.fill("#text-a", text)
    page.click("#predict-btn")
    page.wait_for_selector("#ner-text")
    expected = api(url, json={"inputs": [text]})
    marks = page.locator("#ner-text mark.ent")
    assert marks.count() == len(expected["entities"])
    for i, ent in enumerate(expected["entities"]):
        assert marks.nth(i).get_attribute("data-type") == ent["type"]
        assert marks.nth(i).inner_text().startswith(ent["text"])
    assert page.inner_text("#ner-text").replace("\n", "").startswith("the movie")
    page.screenshot(path=str(artifacts / "serve_ner.png"), full_page=True)


def test_multilabel_chips(open_page, ship_run, artifacts):
    page, url = open_page(ship_run("multilabel"))
    text = "a good film with an awful plot"
    page.fill("#text-a", text)
    page.click("#predict-btn")
    page.wait_for_selector("#chosen-labels")
    expected = api(url, json={"inputs": [text]})
    chips = page.locator("#chosen-labels .chip:not(.none)")
    assert [chips.nth(i).inner_text() for i in range(chips.count())] == expected["labels"]
    assert page.locator(".prob-bar").count() == len(expected["scores"])
    assert page.locator(".threshold").count() == len(expected["scores"])
    page.screenshot(path=str(artifacts / "serve_multilabel.png"), full_page=True)


def test_image_upload(open_page, ship_run, image_data_dir, artifacts):
    page, url = open_page(ship_run("image"))
    assert page.is_visible("#drop-zone") and page.is_hidden("#text-a")
    photo = image_data_dir / "val" / "blue" / "blue_003.png"
    page.set_input_files("#file-input", str(photo))
    page.wait_for_selector("#preview:not([hidden])")
    page.click("#predict-btn")
    page.wait_for_selector("#top-label")
    expected = api(url, files=[("images", (photo.name, photo.read_bytes(), "image/png"))])
    assert page.inner_text("#top-label") == expected["label"]
    assert page.locator(".prob-bar").count() == 2
    page.screenshot(path=str(artifacts / "serve_image.png"), full_page=True)
