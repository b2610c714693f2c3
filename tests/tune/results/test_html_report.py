"""``boxtune report RUN --html FILE``: the page's content, and the page in a real headless Chromium.

The sweep is the suite's shared one (tests/shared_run.py). Set ``BOXTUNE_SCREENSHOTS=DIR`` to keep
the browser's screenshot (docs/img/html-report.png is one).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from trainables.errors import BoxtuneError
from tune.cli import main
from tune.results.html_report import FIGURES, write_html_report
from tune.results.report import param_importances
from tune.run import load_sweep, rank_trials
from tune.run.layout import RANKING_FILE

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WINDOW = (1440, 900)  # a laptop screen, CSS px


@pytest.fixture(scope="module")
def page(shared_run, tmp_path_factory):
    """The page ``boxtune report --html`` wrote for the shared sweep, and the sweep ranked as the report ranks it."""
    path = tmp_path_factory.mktemp("html_report") / "report.html"
    assert main(["report", str(shared_run.run), "--html", str(path)]) == 0
    view = load_sweep(str(shared_run.run))
    return path, view, rank_trials(view)


def _expected_figures(view, rows) -> list[str]:
    """The figures the shared sweep has data for: all but importance, which needs 8 finished trials."""
    assert not param_importances(view)  # 4 trials finished an epoch
    return [f for f in FIGURES if f != "fig-importance"]


def _ranking_order(text: str) -> list[str]:
    table = text.split("id=ranking-table", 1)[1].split("</table>", 1)[0]
    return re.findall(r"<tr data-trial='([^']+)'", table)


def test_page_holds_the_ranking_of_the_report_and_every_figure(page, shared_run):
    path, view, rows = page
    text = path.read_text()
    # the same order as ranking.parquet, which the sweep wrote when it ended
    stored = pq.read_table(shared_run.run / RANKING_FILE).column("trial").to_pylist()
    assert _ranking_order(text) == [r["trial"] for r in rows] == stored
    assert len(stored) == len(view.trials) == 5
    leader = rows[0]
    cells = re.findall(r"<td data-sort='([^']*)'>([^<]*)</td>",
                       text.split(f"<tr data-trial='{leader['trial']}'", 1)[1].split("</tr>", 1)[0])
    shown = [c for _, c in cells]
    assert shown[:6] == ["1", leader["trial"], "TERMINATED", f"{leader['AP']:.4f}",
                         f"{leader['ci_low']:.3f}..{leader['ci_high']:.3f}", "leader"]
    assert float(cells[3][0]) == pytest.approx(leader["AP"])  # sorts on the number, not the text
    # rows within noise of the leader are marked; the shared sweep's val set is too small to tell any apart
    noise = [r["trial"] for r in rows if r.get("distinguishable") is False and r["rank"] != 1]
    assert noise and all(f"<tr data-trial='{t}' class='noise'>" in text for t in noise)
    errored = next(r for r in rows if r["status"] == "ERROR")
    assert "NonFiniteLossError" in errored["error"] and errored["error"] in text
    assert re.findall(r"<figure id=(fig-[a-z-]+)>", text) == _expected_figures(view, rows)
    assert "hyperparameter importance: too few trials (4 finished" in text
    assert "Images: 24 (train 18, val 6, test 0)" in text and "name: shared" in text  # data summary, sweep.yaml


def test_page_needs_no_network(page):
    text = page[0].read_text()
    without_data = re.sub(r"data:[^'\"]*", "", text)
    assert not re.search(r"https?:|//[a-z]", without_data, re.IGNORECASE)
    assert "<script src" not in text and "@import" not in text
    assert text.count("data:image/svg+xml;base64,") == 3 and text.count("data:image/png;base64,") == 6  # 6 val images


def test_a_folder_given_as_the_page_is_named(page, tmp_path):
    _, view, rows = page
    with pytest.raises(BoxtuneError, match=f"--html {tmp_path}: is a folder"):
        write_html_report(view, rows, tmp_path)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium through chromedriver (Debian's chromium and chromium-driver; .ci/run installs them)."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(f"{CHROMIUM} and {CHROMEDRIVER} are not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tmp_path_factory.mktemp("chromium_profile")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    # the page's viewport, not the window: the window's size counts the browser's own frame
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": WINDOW[0], "height": WINDOW[1], "deviceScaleFactor": 1, "mobile": False})
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _column(driver, header: str, *, attribute: str = "textContent") -> list[str]:
    """Column ``header`` of the ranking table, top to bottom as shown: the cells' text or their sort values."""
    from selenium.webdriver.common.by import By

    headers = [h.text for h in driver.find_elements(By.CSS_SELECTOR, "#ranking-table thead th")]
    cells = driver.find_elements(By.CSS_SELECTOR, f"#ranking-table tbody td:nth-child({headers.index(header) + 1})")
    return [c.get_attribute(attribute) for c in cells]


def test_page_renders_in_a_browser_and_its_tables_sort(page, browser, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By

    path, view, rows = page
    browser.get(path.as_uri())
    # rendered: a screenshot with more than a blank page in it
    shot = tmp_path / "html-report.png"
    assert browser.get_screenshot_as_file(str(shot))
    with Image.open(shot) as image:
        assert image.size == WINDOW
        grey = image.convert("L")
        assert sum(1 for n in grey.histogram() if n) > 40 and grey.getextrema()[0] < 64
    if os.environ.get("BOXTUNE_SCREENSHOTS"):
        shutil.copy(shot, Path(os.environ["BOXTUNE_SCREENSHOTS"]) / shot.name)
    assert [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")] == []
    # every trial's row, and every figure drawn (an image that failed to decode has no natural width)
    trials = [tr.get_attribute("data-trial") for tr in browser.find_elements(By.CSS_SELECTOR, "#ranking-table tbody tr")]
    assert trials == [r["trial"] for r in rows]
    figures = browser.find_elements(By.CSS_SELECTOR, "main figure[id]")
    assert [f.get_attribute("id") for f in figures] == _expected_figures(view, rows)
    for figure in figures:
        for img in figure.find_elements(By.TAG_NAME, "img"):
            assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 0
            assert img.size["width"] > 100
    # the page fits a laptop screen: nothing wider than the window but the ranking's own scroll box
    assert browser.execute_script("return document.documentElement.scrollWidth") <= WINDOW[0]
    # sorting: by trial id, then AP up and down, unmeasured AP ('-') last either way
    header = {h.text: h for h in browser.find_elements(By.CSS_SELECTOR, "#ranking-table thead th")}
    header["trial"].click()
    assert _column(browser, "trial") == sorted(r["trial"] for r in rows) != [r["trial"] for r in rows]
    assert header["trial"].get_attribute("aria-sort") == "ascending"
    measured = sorted(r["AP"] for r in rows if r["best_epoch"])
    for direction, expected in (("ascending", measured), ("descending", measured[::-1])):
        header["AP"].click()
        assert header["AP"].get_attribute("aria-sort") == direction
        values = _column(browser, "AP", attribute="data-sort")
        assert [float(v) for v in values[:len(measured)]] == pytest.approx(expected) and values[len(measured):] == [""]
        assert sorted(_column(browser, "trial")) == sorted(r["trial"] for r in rows)
    assert _column(browser, "status")[-1] == "ERROR"
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
