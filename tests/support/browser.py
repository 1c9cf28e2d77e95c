"""Headless Chromium for the browser tests, from Debian's chromium and chromium-driver packages
(scripts/setup installs them in CI; elsewhere the tests skip without them)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def chromium(profile: Path, height: int, script_timeout: float, log_requests: bool = False) -> Iterator[Any]:
    """A headless Chromium driven by selenium, 1280 px wide, quit afterwards; ``log_requests``
    keeps the console (CSP violations land there) and every request the page makes."""
    if not (Path(CHROMIUM).exists() and shutil.which(CHROMEDRIVER)):
        if os.environ.get("CI") == "true":
            pytest.fail("chromium and chromium-driver must be installed (scripts/setup does it in CI)")
        pytest.skip("chromium and chromium-driver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--window-size=1280,{height}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    if log_requests:
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(script_timeout)
    yield driver
    driver.quit()
