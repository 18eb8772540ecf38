"""The results viewer in a real headless Chromium (Debian's chromium + chromium-driver, selenium).

Pages of the embedded model's runs (1 and 4 decoder steps, two sample photos) are opened from
file:// and checked as a reader sees them. Marker `browser`: left out of the default run;
`.ci/run` installs chromium and chromium-driver and runs `pytest -m browser`. Without them the
tests skip, except under CI=true, where they fail: CI must not go green without a browser.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from diffae import __version__
from diffae.cli import main
from diffae.images import sample_photos

pytestmark = pytest.mark.browser

PHOTOS = ("chelsea.png", "coffee.png")
WAIT_SECONDS = 30
"""Upper bound of every wait on the page (loads take well under a second here)."""
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # No background traffic (updates, sync, field trials): on a closed network each attempt
    # would end in a refused connection, and the page must be the only thing loading.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
)


def find_program(variable: str, *names: str) -> str | None:
    """$variable, else the first of `names` on PATH."""
    if os.environ.get(variable):
        return os.environ[variable]
    return next((path for name in names if (path := shutil.which(name))), None)


def need(condition: bool, reason: str) -> None:
    """Skip without `condition`; under CI=true fail instead (CI installs the browser)."""
    if condition:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI must run the browser tests)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def driver() -> Iterator[object]:
    """Headless Chromium with a fresh profile; the browser and performance logs recorded."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        need(False, "selenium is not installed (uv sync installs the `browser` group)")
    chromium = find_program("DIFFAE_CHROMIUM", "chromium", "chromium-browser")
    chromedriver = find_program("DIFFAE_CHROMEDRIVER", "chromedriver")
    need(
        all(
            program is not None and Path(program).is_file() for program in (chromium, chromedriver)
        ),
        f"chromium ({chromium}) or chromedriver ({chromedriver}) missing: apt-get install -y "
        "chromium chromium-driver",
    )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="diffae-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    browser = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        browser.set_page_load_timeout(WAIT_SECONDS)
        browser.set_script_timeout(WAIT_SECONDS)
        yield browser
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The embedded model at 1 and 4 steps (`reconstruct --viewer`), and their two-run page."""
    folder = tmp_path_factory.mktemp("viewer")
    photos = [str(path) for path in sample_photos() if path.name in PHOTOS]
    for steps in (1, 4):
        out = folder / f"steps{steps}"
        argv = ["reconstruct", *photos, "--out", str(out), "--steps", str(steps), "--viewer"]
        assert main([*argv, "--quiet"]) == 0
    both = folder / "both"
    assert main(["viewer", str(folder / "steps1"), str(folder / "steps4"), "--out", str(both)]) == 0
    return {"one": folder / "steps1", "both": both}


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text(encoding="utf-8"))


def open_page(driver, page: Path) -> None:
    """Load `page` from file:// (logs emptied first) and wait until every image is in."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get_log("browser")
    driver.get_log("performance")
    driver.get(page.resolve().as_uri())
    wait_images(driver)
    WebDriverWait(driver, WAIT_SECONDS).until(
        lambda d: d.find_elements("css selector", "#photos tbody tr")
    )


def wait_images(driver) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, WAIT_SECONDS).until(
        lambda d: d.execute_script("return [...document.images].every((i) => i.complete)")
    )


def images_loaded(driver) -> list[tuple[str, int]]:
    """(src, naturalWidth) of every <img> with a source on the page."""
    return driver.execute_script(
        "return [...document.images].filter((i) => i.getAttribute('src'))"
        ".map((i) => [i.src, i.naturalWidth])"
    )


def cells(driver, key: str) -> list[tuple[str, str]]:
    """(shown text, data-value) of one column of the table, top to bottom."""
    return [
        (cell.text, cell.get_attribute("data-value"))
        for cell in driver.find_elements("css selector", f"#photos tbody td[data-key='{key}']")
    ]


def test_page_loads_from_file_with_no_console_errors_and_no_network(driver, runs):
    open_page(driver, runs["both"] / "index.html")
    driver.find_element("css selector", "#photos tbody tr").click()
    wait_images(driver)
    problems = [entry for entry in driver.get_log("browser") if entry["level"] != "INFO"]
    assert problems == []
    requested = [
        message["params"]["request"]["url"]
        for entry in driver.get_log("performance")
        if (message := json.loads(entry["message"])["message"])["method"]
        == "Network.requestWillBeSent"
    ]
    assert requested, "the performance log recorded no request at all"
    assert [url for url in requested if not url.startswith(("file://", "data:"))] == []


def test_table_has_a_row_per_photo_and_the_figures_of_metrics_json(driver, runs):
    run = runs["one"]
    open_page(driver, run / "viewer" / "index.html")
    report = metrics(run)
    rows = driver.find_elements("css selector", "#photos tbody tr")
    assert sorted(row.get_attribute("data-photo") for row in rows) == sorted(
        Path(image["output"]).stem for image in report["images"]
    )
    loaded = images_loaded(driver)
    assert len(loaded) == len(report["images"]) and all(width > 0 for _, width in loaded)
    shown = dict(
        zip([r.get_attribute("data-photo") for r in rows], cells(driver, "psnr0"), strict=True)
    )
    for image in report["images"]:
        text, value = shown[Path(image["output"]).stem]
        assert float(value) == image["psnr_db"] and text == f"{image['psnr_db']:.2f}"
    for statistic in ("mean", "std", "median", "p5", "p95"):
        footer = driver.find_elements(
            "css selector", f"#photos tfoot tr[data-stat='{statistic}'] td"
        )
        values = [
            cell.get_attribute("data-value") for cell in footer if cell.get_attribute("data-value")
        ]
        assert float(values[0]) == pytest.approx(report["summary"][statistic], rel=1e-12)
    header = driver.find_element("id", "runs").text
    for fact in ("embedded", "fcdm_diffae", "float32", "8:1", __version__):
        assert fact in header


def test_clicking_a_header_sorts_by_it(driver, runs):
    open_page(driver, runs["both"] / "index.html")
    header = driver.find_element("css selector", "#photos th[data-key='psnr1']")
    header.click()
    values = [float(value) for _, value in cells(driver, "psnr1")]
    assert (
        values == sorted(values, reverse=True) and header.get_attribute("aria-sort") == "descending"
    )
    header.click()
    values = [float(value) for _, value in cells(driver, "psnr1")]
    assert values == sorted(values) and header.get_attribute("aria-sort") == "ascending"
    driver.find_element("css selector", "#photos th[data-key='name']").click()
    names = [text for text, _ in cells(driver, "name")]
    assert names == sorted(names)


def test_detail_view_shows_the_photos_panels_zooms_together_and_navigates(driver, runs):
    from selenium.webdriver.common.keys import Keys

    open_page(driver, runs["both"] / "index.html")
    driver.find_element("css selector", "#photos th[data-key='name']").click()  # a-z
    driver.find_element("css selector", "#photos tbody tr[data-photo='coffee']").click()
    wait_images(driver)
    assert driver.find_element("id", "detail").is_displayed()
    assert not driver.find_element("id", "overview").is_displayed()
    assert driver.find_element("id", "photo-name").text.startswith("coffee")
    panels = driver.find_elements("css selector", "#panels .vp img")
    sources = [image.get_attribute("src") for image in panels]
    assert all("/images/coffee/" in source for source in sources)
    for name in ("original.png", "run0.png", "run1.png", "run0-error.png", "run1-pca.png"):
        assert any(source.endswith(name) for source in sources), name
    assert all(width > 0 for _, width in images_loaded(driver))
    labels = driver.find_element("id", "panels").text
    assert "original" in labels and "RGB error" in labels and "latent PCA" in labels
    body = driver.find_element("tag name", "body")
    body.send_keys("1")  # one image pixel per screen pixel, then 8x: single pixels, unsmoothed
    body.send_keys("+++")
    transforms = {image.get_attribute("style") for image in panels}
    assert len(transforms) == 1 and "scale(8)" in transforms.pop()
    viewports = driver.find_elements("css selector", "#panels .vp")
    assert all("pixelated" in viewport.get_attribute("class") for viewport in viewports)
    split = driver.find_element("css selector", ".vp[data-panel='compare'] .split")
    assert split.is_displayed()  # A left of the split, B right of it
    body.send_keys("f")  # flip: all B
    assert driver.find_element("id", "compare-flip").text == "showing B"
    assert not split.is_displayed()
    body.send_keys(Keys.ARROW_LEFT)  # coffee is last a-z: the previous photo is chelsea
    wait_images(driver)
    assert driver.find_element("id", "photo-name").text.startswith("chelsea")
    body.send_keys(Keys.ESCAPE)
    assert driver.find_element("id", "overview").is_displayed()


def test_two_run_page_shows_both_runs_and_their_difference(driver, runs):
    open_page(driver, runs["both"] / "index.html")
    one, four = metrics(runs["both"].parent / "steps1"), metrics(runs["both"].parent / "steps4")
    header = driver.find_element("id", "runs").text
    assert "embedded, 1 steps" in header and "embedded, 4 steps" in header
    rows = [
        row.get_attribute("data-photo")
        for row in driver.find_elements("css selector", "#photos tbody tr")
    ]
    gains = dict(zip(rows, cells(driver, "gain1"), strict=True))
    for first, second in zip(one["images"], four["images"], strict=True):
        text, value = gains[Path(first["output"]).stem]
        assert float(value) == pytest.approx(second["psnr_db"] - first["psnr_db"], abs=1e-12)
        assert text == f"{second['psnr_db'] - first['psnr_db']:+.2f}"


def pixel_spread(path: Path) -> float:
    """Standard deviation of a screenshot's pixel values: near 0 for a blank page."""
    from PIL import Image

    with Image.open(path) as picture:
        return float(np.asarray(picture.convert("L"), dtype=np.float64).std())


def test_screenshots_of_the_overview_and_a_detail_view_are_not_blank(driver, runs, tmp_path):
    open_page(driver, runs["both"] / "index.html")
    overview = tmp_path / "overview.png"
    assert driver.save_screenshot(str(overview))
    driver.find_element("css selector", "#photos tbody tr").click()
    wait_images(driver)
    detail = tmp_path / "detail.png"
    assert driver.save_screenshot(str(detail))
    assert pixel_spread(overview) > 10.0
    assert pixel_spread(detail) > 20.0
