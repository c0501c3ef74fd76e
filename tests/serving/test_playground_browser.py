"""The playground page in a real headless Chromium (Debian's, driven by Selenium) against the real application:
it loads, draws samples from its controls, renders the K strip, shows the API's own error text and streams to
100 %. Screenshots go to test-artifacts/. Without the browser the test fails, naming how to install it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.browser import headless_chromium, missing

pytestmark = pytest.mark.slow
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

# Pixels of a canvas that are not white: proof that something was drawn.
INKED = """
const c = arguments[0], d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] < 250 || d[i + 1] < 250 || d[i + 2] < 250) n++;
return n;"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    why = missing()
    if why is not None:
        pytest.fail(f"the playground's browser test needs Debian's Chromium: {why}")
    driver = headless_chromium()
    driver.set_script_timeout(60)
    ARTIFACTS.mkdir(exist_ok=True)
    yield driver
    driver.quit()


def wait_for(driver: Any, script: str, timeout: float = 60.0) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: d.execute_script(script))


def fill(driver: Any, **fields: str) -> None:
    for name, value in fields.items():
        el = driver.find_element("id", name)
        if el.tag_name == "select":
            from selenium.webdriver.support.ui import Select

            Select(el).select_by_value(value)
        else:
            el.clear()
            el.send_keys(value)


def test_page_and_its_files_are_served_without_a_cdn(stepserve_url: str) -> None:
    page = httpx.get(f"{stepserve_url}/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "//" not in page.text.replace("<!doctype html>", "").split("<body>")[0]  # no other origin in <head>
    for name in ("playground.js", "playground.css"):
        assert httpx.get(f"{stepserve_url}/playground/{name}", timeout=30).status_code == 200
    assert httpx.get(f"{stepserve_url}/playground/../app.py", timeout=30).status_code == 404


def test_playground_draws_strips_errors_and_streams(browser: Any, stepserve_url: str) -> None:
    d = browser
    d.get(f"{stepserve_url}/")
    wait_for(d, "return document.body.dataset.ready === '1'")
    models = [o.get_attribute("value") for o in d.find_elements("css selector", "#model option")]
    assert set(models) == {"moons-ddpm", "moons-fm", "digits-ddpm", "digits-fm"}

    # A request from the controls: drawn on the canvas, NFE and latency shown.
    fill(d, model="moons-fm", sampler="fm-euler", steps="10", seed="3")
    d.find_element("id", "run").click()
    wait_for(d, "return document.getElementById('main').dataset.drawn === '256'")
    assert d.execute_script(INKED, d.find_element("id", "main")) > 100
    assert d.find_element("id", "nfe").text == "10" and d.find_element("id", "latency").text.endswith("ms")
    d.save_screenshot(str(ARTIFACTS / "playground-moons.png"))

    # The K strip: five panels, each drawn, the same seed.
    d.find_element("id", "kstrip").click()
    wait_for(d, "return document.getElementById('kstrip-panels').dataset.done === '5'")
    panels = d.find_elements("css selector", "#kstrip-panels canvas")
    captions = [c.text for c in d.find_elements("css selector", "#kstrip-panels .caption")]
    assert len(panels) == 5 and all(d.execute_script(INKED, p) > 50 for p in panels), captions
    assert [c.split(" · ")[0] for c in captions] == ["K = 1", "K = 2", "K = 5", "K = 10", "K = 50"]

    # Bad input: the API's own words (message and field) on the page.
    for fields, text in (
        ({"steps": "0"}, "422 (steps) steps must be in [1, 1000], got 0"),
        ({"steps": "10", "num_samples": "5000"}, "422 (num_samples) num_samples must be in [1, 256], got 5000"),
    ):
        fill(d, **fields)
        d.find_element("id", "run").click()
        wait_for(d, "return !document.getElementById('error').hidden")
        assert d.find_element("id", "error").text == text
    d.save_screenshot(str(ARTIFACTS / "playground-error.png"))

    # A streamed image request: the progress bar reaches 100 % and the final grid is drawn.
    fill(d, model="digits-fm")
    fill(d, sampler="fm-euler", steps="12", num_samples="16", class_label="3", guidance="2", preview_every="3")
    d.find_element("id", "stream").click()
    wait_for(d, "return document.getElementById('progress').dataset.percent === '100'")
    wait_for(d, "return document.getElementById('main').dataset.drawn === '16'")
    assert d.find_element("id", "error").get_attribute("hidden") is not None
    assert d.find_element("id", "nfe").text == "24"  # guided: cond and null rows
    assert d.execute_script(INKED, d.find_element("id", "main")) > 100
    d.save_screenshot(str(ARTIFACTS / "playground-stream.png"))

    # The w strip at the chosen class.
    d.find_element("id", "wstrip").click()
    wait_for(d, "return document.getElementById('wstrip-panels').dataset.done === '5'")
    captions = [c.text for c in d.find_elements("css selector", "#wstrip-panels .caption")]
    assert [c.split(" · ")[0] for c in captions] == ["w = 0", "w = 1", "w = 3", "w = 5", "w = 8"], captions
    assert not any(
        "error" in c.get_attribute("class") for c in d.find_elements("css selector", "#wstrip-panels .caption")
    )
    d.save_screenshot(str(ARTIFACTS / "playground-strips.png"))
