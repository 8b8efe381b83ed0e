"""Browser review: the local ZenML dashboard shows the latest dmd2_pipeline run and its report.

The session's tiny runs (tests/conftest.py `pipeline_runs`: a rejected dmd2_pipeline run, two guided_pipeline
runs, and a dmd2_pipeline run that passed on changed data) live in an isolated ZenML store (ZENML_CONFIG_PATH and the repository
under a temp folder; nothing touches ~/.config/zenml or the repo's .zen). `zenml login --local`
starts the dashboard for that store and headless Debian
chromium (Playwright, executable_path) finds the newest run in the pipeline's runs table, opens
it, opens the run_report artifact's Visualization and checks the rendered report says PASSED.

The dashboard can be driven offline (ZenML 0.98 bundles every asset; see browser.py), so the
screenshot fallback `render_html_screenshot` is only exercised by its own small test.
Needs chromium + playwright: `scripts/browser.sh` installs both (`make test` runs it).
"""
import os
import time
from pathlib import Path

import pytest

from tests.review import browser

PIPELINE = "dmd2_pipeline"
REPORT_TITLE = "fewstep run report"

CHROMIUM = browser.find_chromium()
needs_browser = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not found: run scripts/browser.sh (apt chromium + pip playwright)")
pytest.importorskip("playwright", reason="playwright missing: run scripts/browser.sh")


def _shot_dir(tmp_path):
    d = Path(os.environ.get("REVIEW_SCREENSHOT_DIR", tmp_path))
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture
def dashboard(pipeline_runs, zenml_env):
    """`zenml login --local` on a free port for the session's store (its newest run is the shared
    'changed' run, which passed the gate); `zenml logout --local` after."""
    repo = Path(zenml_env["ZENML_REPOSITORY_PATH"])
    try:
        yield browser.start_local_server(zenml_env, cwd=repo)
    finally:
        browser.stop_local_server(zenml_env, cwd=repo)


@needs_browser
@pytest.mark.timeout(300)
def test_dashboard_shows_latest_run_report(dashboard, tmp_path):
    url = dashboard
    latest = browser.latest_run(url, PIPELINE)        # the REST API's newest run: the one the UI must show
    png = _shot_dir(tmp_path) / "dashboard_run_report.png"
    t0 = time.time()
    with browser.chromium_page(CHROMIUM) as page:
        seen = browser.open_latest_run_report(page, url, PIPELINE, "run_report",
                                              expect_text=REPORT_TITLE, png_path=png)
    print(f"\ndashboard {seen['page_url']} in {time.time() - t0:.1f}s; screenshot: {png}")
    assert seen["run_id"] == latest["run_id"]
    text = seen["report_text"]
    assert REPORT_TITLE in text and "PASSED" in text and "staging" in text   # the second run's gate decision
    assert "FID vs NFE" in text and "Quality gate" in text
    assert png.stat().st_size > 10_000 and browser.png_is_nontrivial(png)


@needs_browser
def test_report_html_screenshot_fallback(tmp_path):
    """The fallback used when no dashboard can be driven: render the report HTML, screenshot it."""
    html = tmp_path / "report.html"
    html.write_text(f"<h1>{REPORT_TITLE}</h1><table><tr><td>fid</td><td>12.3</td></tr></table>")
    png = browser.render_html_screenshot(html, _shot_dir(tmp_path) / "report_fallback.png", CHROMIUM)
    print(f"\nfallback screenshot: {png}")
    assert browser.png_is_nontrivial(png)
