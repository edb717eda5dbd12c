"""End to end in a real browser: JupyterLab runs a notebook showing a SliceViewer, a slider moves.

Starts JupyterLab on 127.0.0.1 (free port, no token, a temporary root and config), opens
``tests/browser_support/slice_viewer.ipynb`` in Debian's chromium through Playwright, runs all
cells from the Run menu, moves the z slider with the keyboard and checks that the picture
changed. Screenshots go to ``build/screenshots/``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from labkit.io import atomic_write_bytes, atomic_write_json

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = Path(__file__).parent / "browser_support" / "slice_viewer.ipynb"
SCREENSHOTS = REPO / "build" / "screenshots"
SERVER_START_S = 60
WIDGET_WAIT_MS = 60_000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_environment(home: Path) -> dict:
    """The server's (and so the kernel's) environment: live drawing on, private Jupyter dirs."""
    environment = {key: value for key, value in os.environ.items() if key != "LABKIT_HEADLESS"}
    environment.update(JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
                       IPYTHONDIR=str(home / "ipython"), PYTHONPATH=str(REPO),
                       JUPYTER_PLATFORM_DIRS="1")
    return environment


def quiet_lab_config(home: Path) -> None:
    """Turn off the news / update pop-ups so nothing covers the menu."""
    atomic_write_json(home / "config" / "labconfig" / "page_config.json",
                      {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}})


def wait_until_serving(process: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"JupyterLab exited with code {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/status", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"JupyterLab did not answer within {SERVER_START_S} s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    """Stop the server and its kernels (its own process group)."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


@pytest.fixture(scope="module")
def lab_url(tmp_path_factory):
    """A JupyterLab server on a free local port, rooted in a temp dir holding the notebook."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)")
    home = tmp_path_factory.mktemp("jupyterlab")
    root = home / "root"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    quiet_lab_config(home)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
               f"--port={port}", "--ServerApp.port_retries=0", "--IdentityProvider.token=",
               "--ServerApp.password=", f"--ServerApp.root_dir={root}",
               f"--LabApp.workspaces_dir={home / 'workspaces'}", "--LabApp.news_url=",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--LabApp.extension_manager=readonly", "--ServerApp.terminals_enabled=False"]
    if os.geteuid() == 0:  # containers and CI runners often run as root
        command.append("--allow-root")
    log = home / "jupyterlab.log"
    with open(log, "wb") as log_file:
        process = subprocess.Popen(command, cwd=root, env=server_environment(home),
                                   stdout=log_file, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        wait_until_serving(process, url, log)
        yield url
    finally:
        stop(process)


@pytest.fixture
def page(lab_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(WIDGET_WAIT_MS)
            yield page
        finally:
            browser.close()


def save_screenshot(name: str, data: bytes) -> Path:
    return atomic_write_bytes(SCREENSHOTS / name, data)


def run_all_cells(page) -> None:
    """Run → Run All Cells, from JupyterLab's menu bar."""
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()


def test_slice_viewer_slider_changes_the_picture(lab_url, page):
    page.goto(f"{lab_url}/lab/tree/{NOTEBOOK.name}")
    try:
        page.locator(".jp-Notebook .jp-Cell").first.wait_for()
        # the kernel is ready once the status bar reads "Python 3 (ipykernel) | Idle"
        page.locator(".jp-StatusBar-Widget", has_text="| Idle").first.wait_for()
        run_all_cells(page)
        picture = page.locator("img.labkit-slice-viewer-image")
        picture.wait_for(state="visible")
        page.wait_for_function("image => image.complete && image.naturalWidth > 0",
                               arg=picture.element_handle())
        slider = page.locator(".labkit-slider-z")
        readout = slider.locator(".widget-readout")
        source_before, readout_before = picture.get_attribute("src"), readout.inner_text()
        caption = page.locator(".labkit-slice-viewer-caption")
        caption_before = caption.inner_text()
        before = save_screenshot("slice_viewer_before.png", picture.screenshot())

        slider.locator(".noUi-handle").focus()
        for _ in range(4):
            page.keyboard.press("ArrowRight")
        # the kernel writes the caption after the new picture: wait for the last key's drawing
        caption.filter(has_text="z = 14").wait_for()
        page.wait_for_function("image => image.complete && image.naturalWidth > 0",
                               arg=picture.element_handle())
        after = save_screenshot("slice_viewer_after.png", picture.screenshot())
    except Exception:
        save_screenshot("slice_viewer_failure.png", page.screenshot(full_page=True))
        raise

    assert readout_before.strip() == "10" and caption_before.endswith("z = 10")
    assert readout.inner_text().strip() == "14"
    assert picture.get_attribute("src") != source_before
    assert before.read_bytes() != after.read_bytes()
