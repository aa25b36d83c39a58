"""Headless Chromium (Debian's `chromium` package) driven by Playwright, for the label page's browser test.

Run as a script it takes the README's screenshot: a project from the sample's RM file, one person, the first item
half ranked by keyboard:  python tests/label_browser.py docs/label-page.png
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

SYSTEM_CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def chromium_path() -> str | None:
    """The system browser, or None (Playwright's own browser download needs a network kochat's CI does not have)."""
    found = next((path for path in SYSTEM_CHROMIUM if Path(path).is_file()), None)
    return found or shutil.which("chromium")


@contextmanager
def browser_page(width: int = 1000, height: int = 900):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


def take_screenshot(out: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).parent))
    from label_helpers import RunningServer

    from kochat_human.project import LabelProjectConfig, new_project, open_project

    with tempfile.TemporaryDirectory() as scratch:
        project = Path(scratch) / "project"
        sample = Path(__file__).resolve().parents[1] / "data" / "sample" / "kochatgpt_2_RM.jsonl"
        new_project(LabelProjectConfig(out=project, candidates=sample, annotators_per_item=1))
        store = open_project(project)
        person = store.invite(["민지"])[0][0]
        with RunningServer(project, store) as server, browser_page(900, 820) as page:
            page.goto(f"{server.url}/label/{person.token}")
            page.wait_for_selector("#answers li")
            page.keyboard.press("2")
            page.keyboard.press("=")
            page.screenshot(path=str(out), full_page=True)
    return out


if __name__ == "__main__":
    print(take_screenshot(Path(sys.argv[1] if len(sys.argv) > 1 else "label-page.png")))
