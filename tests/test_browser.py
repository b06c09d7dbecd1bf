"""A person's path through the web page, in headless Chromium: fill the form, follow
the progress page to a running notebook, run its cell.  Screenshots are kept in
artifacts/screenshots/ for people to look at."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT
from launchkit import make_repo
from webkit import Server, headless_chromium, wait_for

SHOTS = ROOT / "artifacts" / "screenshots"

SITE = """\
version: 1
site:
  name: "GeneNetwork Binder"
  slug: genenetwork
  tagline: "Reproducible notebooks on GNU Guix"
  logo: logo.svg
  primary_color: "#0b6e4f"
"""

pytestmark = pytest.mark.browser


@pytest.fixture
def browser() -> Iterator[object]:
    with headless_chromium("--window-size=1280,900") as driver:  # screenshots people read
        yield driver


def test_form_to_running_notebook(browser: object, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = browser
    SHOTS.mkdir(parents=True, exist_ok=True)
    (tmp_path / "logo.svg").write_text((ROOT / "examples/branding/genenetwork.svg").read_text())
    (tmp_path / "site.yaml").write_text(SITE)
    repo = make_repo(tmp_path / "repo")
    server = Server(tmp_path / "site.yaml", tmp_path / "state", ("--allow-local-repos",)).start()
    try:
        driver.get(server.url)  # type: ignore[attr-defined]
        assert "GeneNetwork Binder" in driver.title  # type: ignore[attr-defined]
        driver.find_element(By.ID, "repo").send_keys(f"file://{repo}")  # type: ignore[attr-defined]
        driver.find_element(By.ID, "path").send_keys("index.ipynb")  # type: ignore[attr-defined]
        link = driver.find_element(By.ID, "link").get_attribute("value")  # type: ignore[attr-defined]
        assert "/v2/git/file%3A%2F%2F" in link
        driver.save_screenshot(str(SHOTS / "1-landing.png"))  # type: ignore[attr-defined]
        driver.find_element(By.ID, "launch").click()  # type: ignore[attr-defined]
        wait_for(lambda: "/progress" in driver.current_url or "/s/" in driver.current_url)  # type: ignore[attr-defined]
        driver.save_screenshot(str(SHOTS / "2-progress.png"))  # type: ignore[attr-defined]
        wait_for(lambda: "/notebooks/index.ipynb" in driver.current_url, 90)  # type: ignore[attr-defined]

        def run_cell() -> bool:
            # The notebook re-renders while it loads: find the cell anew each try.
            cell = driver.find_element(By.CSS_SELECTOR, ".jp-CodeCell .cm-content")  # type: ignore[attr-defined]
            cell.click()
            cell.send_keys(Keys.SHIFT, Keys.ENTER)
            return True

        def output() -> list[str]:
            elements = driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output")  # type: ignore[attr-defined]
            return [e.text.strip() for e in elements if e.text.strip()]

        # The preselected kernel starts by itself: nobody is asked to pick one.
        wait_for(lambda: "Python 3" in driver.find_element(By.CSS_SELECTOR, "body").text)  # type: ignore[attr-defined]
        assert "Select Kernel" not in driver.find_element(By.CSS_SELECTOR, "body").text  # type: ignore[attr-defined]
        deadline = time.monotonic() + 90
        while not output() and time.monotonic() < deadline:
            wait_for(run_cell)
            time.sleep(2)
        assert output()[0] == "42"
        driver.save_screenshot(str(SHOTS / "3-notebook.png"))  # type: ignore[attr-defined]
        driver.get(f"{server.url}/sessions")  # type: ignore[attr-defined]
        assert "Push changes" in driver.page_source  # type: ignore[attr-defined]
        driver.save_screenshot(str(SHOTS / "4-sessions.png"))  # type: ignore[attr-defined]
    finally:
        server.stop()
