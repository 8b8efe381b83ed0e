"""Helpers to drive the local ZenML dashboard with Debian's headless chromium via Playwright.

Verified against ZenML 0.98.0 (dashboard bundled in the wheel), chromium 156 (Debian 12) and
playwright 1.65.2. The dashboard works fully offline: all JS/CSS/fonts are served by the local
server; the only external requests (avatar.vercel.sh, S3 project logos, raw.githubusercontent)
are decorative, so `chromium_page` aborts every non-local request to keep the run fast.

Dashboard facts used here (routes from the bundle's routes-*.js):
  /projects/default/pipelines/<pipeline_id>/runs  runs table, newest first
  /projects/default/runs/<run_id>                 run DAG; artifact nodes are
      `.react-flow__node-artifact` holding a `button[data-selected]`; clicking it opens a sheet
      with tabs Overview / Metadata / Visualization; HTML needs a "Load Preview" click and is then
      shown in `iframe[title="Secure HTML Content"]` (sandboxed srcdoc).
A fresh local server uses NO_AUTH (no login), but `/` redirects to `/survey?redirect=/onboarding`
until the user has `email_opted_in` set and `user_metadata.finished_onboarding_survey`;
`skip_onboarding` sets both through `PUT /api/v1/current-user`.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

ZENML = str(Path(sys.executable).with_name("zenml"))
QUIET_ENV = {  # telemetry off, no browser popping up
    "ZENML_ANALYTICS_OPT_IN": "false", "DVC_NO_ANALYTICS": "1", "WANDB_MODE": "offline",
    "AUTO_OPEN_DASHBOARD": "false", "ZENML_AUTO_OPEN_DASHBOARD": "false",
}


def find_chromium() -> str | None:
    """Debian's chromium (scripts/browser.sh installs it); CHROMIUM_PATH overrides."""
    return os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")


def zenml_env(config_dir: Path, repo_dir: Path) -> dict:
    """Environment for subprocesses with ZenML state isolated in config_dir.

    ZENML_REPOSITORY_PATH stops ZenML from searching parent folders for a `.zen` repository."""
    return {**os.environ, **QUIET_ENV, "ZENML_CONFIG_PATH": str(config_dir),
            "ZENML_REPOSITORY_PATH": str(repo_dir)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(url: str, path: str, method: str = "GET", body: dict | None = None, **params):
    """Call the server's REST API (the local server needs no token: auth_scheme NO_AUTH)."""
    q = ("?" + urllib.parse.urlencode(params)) if params else ""
    req = urllib.request.Request(f"{url}/api/v1{path}{q}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def skip_onboarding(url: str) -> None:
    """Mark the default user's survey as done so the dashboard doesn't redirect to /survey."""
    api(url, "/current-user", "PUT", {"email_opted_in": False,
                                      "user_metadata": {"finished_onboarding_survey": True}})


def start_local_server(env: dict, port: int | None = None, cwd: Path | None = None) -> str:
    """`zenml login --local --port N` (daemon; ~20 s on 2 cores); returns the dashboard URL."""
    port = port or free_port()
    out = subprocess.run([ZENML, "login", "--local", "--port", str(port)], env=env, cwd=cwd,
                         capture_output=True, text=True, timeout=180)
    text = out.stdout + out.stderr
    m = re.search(r"dashboard is available at '(http[^']+)'", text)
    if out.returncode or not m:
        raise RuntimeError(f"zenml login --local failed ({out.returncode}):\n{text[-3000:]}")
    url = m.group(1).rstrip("/")
    for _ in range(60):  # the CLI already waits for /health; be safe anyway
        with contextlib.suppress(OSError):
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        time.sleep(0.5)
    skip_onboarding(url)
    return url


def stop_local_server(env: dict, cwd: Path | None = None) -> None:
    """`zenml logout --local`: disconnects the client and shuts the daemon down."""
    subprocess.run([ZENML, "logout", "--local"], env=env, cwd=cwd, capture_output=True, timeout=120)


def latest_run(url: str, pipeline_name: str, artifact: str = "run_report") -> dict:
    """REST view of the newest run of a pipeline and its artifact version (for cross-checks)."""
    pipe = api(url, "/pipelines", name=pipeline_name)["items"][0]
    run = api(url, "/runs", pipeline_id=pipe["id"], sort_by="desc:created", size=1)["items"][0]
    steps = api(url, "/steps", pipeline_run_id=run["id"], hydrate="true")["items"]
    av = next(s["resources"]["outputs"][artifact][0] for s in steps
              if artifact in (s.get("resources") or {}).get("outputs", {}))
    return {"pipeline_id": pipe["id"], "run_id": run["id"], "run_name": run["name"],
            "artifact_version_id": av["id"]}


@contextlib.contextmanager
def chromium_page(executable: str | None = None, offline: bool = True, width=1400, height=900):
    """Headless Debian chromium (--no-sandbox: we run as root) driven by Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable or find_chromium(), headless=True,
                                    args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(30_000)
            if offline:  # only localhost / inline resources; anything else fails fast
                page.route("**/*", lambda r: r.continue_() if urllib.parse.urlsplit(r.request.url).hostname
                           in (None, "", "127.0.0.1", "localhost") else r.abort())
            yield page
        finally:
            browser.close()


def save_screenshot(page, png_path) -> Path:
    """Viewport screenshot. (The /survey page has an animated WebGL canvas on which
    page.screenshot hangs in software-GL headless chromium; the run pages have no canvas.)"""
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(png_path), timeout=30_000)
    return png_path


def open_latest_run_report(page, url: str, pipeline_name: str, artifact: str = "run_report",
                           expect_text: str | None = None, png_path=None) -> dict:
    """Drive the dashboard: pipeline runs table -> newest row -> run DAG -> artifact sheet ->
    Visualization -> Load Preview. Returns what the UI showed; asserts the run is the newest."""
    from playwright.sync_api import expect

    rest = latest_run(url, pipeline_name, artifact)
    # 1. the pipeline's runs table lists newest first: the first row must be the latest run
    page.goto(f"{url}/projects/default/pipelines/{rest['pipeline_id']}/runs")
    first_row = page.locator("table tbody tr").first
    expect(first_row).to_contain_text(rest["run_name"], timeout=30_000)  # full name in textContent
    expect(first_row).to_contain_text(rest["run_id"][:8])  # short id shown under the name
    # 2. open it by clicking the run link in that row (not a deep link) and check the URL
    first_row.locator(f"a[href*='{rest['run_id']}']").first.click()
    page.wait_for_url(f"**/runs/{rest['run_id']}**")
    # 3. the DAG renders only the nodes in view: its search centres the artifact node, which then
    #    opens a side sheet
    page.locator(".react-flow__node").first.wait_for()      # the graph is laid out: search can find nodes
    page.get_by_role("button", name="Open DAG search").click()
    search = page.get_by_placeholder("Search")
    search.fill(artifact)
    node = page.locator(".react-flow__node-artifact").filter(has_text=artifact).first
    for _ in range(20):                 # Enter jumps to the match once the (debounced) search has run
        search.press("Enter")
        if node.count():
            break
        page.wait_for_timeout(500)
    node.locator("button[data-selected]").click()
    page.get_by_role("tab", name="Visualization").last.click()
    page.get_by_role("button", name="Load Preview").click()  # HTML is gated behind a warning
    frame = page.frame_locator("iframe[title='Secure HTML Content']")
    if expect_text:
        expect(frame.get_by_text(expect_text)).to_be_visible()
    expect(page.get_by_text(rest["artifact_version_id"])).to_be_visible()  # sheet header shows it
    shown = frame.locator("body").inner_text()
    png = save_screenshot(page, png_path) if png_path else None
    return {**rest, "report_text": shown, "screenshot": png, "page_url": page.url}


def render_html_screenshot(html_path, png_path, executable: str | None = None) -> Path:
    """Fallback: render a local HTML file in headless chromium and save a full-page screenshot."""
    with chromium_page(executable) as page:
        page.goto(Path(html_path).resolve().as_uri())
        png_path = Path(png_path)
        png_path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(png_path), full_page=True)
    return png_path


def png_is_nontrivial(png_path, min_colors: int = 8) -> bool:
    """True if the PNG is a real render: more than a handful of distinct colours, not one fill."""
    from PIL import Image

    with Image.open(png_path) as im:
        colors = im.convert("RGB").getcolors(maxcolors=1 << 16)
    return colors is None or len(colors) >= min_colors
