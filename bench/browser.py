"""A headless Chromium driven by Selenium, from Debian's `chromium` and `chromium-driver` packages only.

Selenium is pointed at /usr/bin/chromium and /usr/bin/chromedriver explicitly, so selenium-manager never
runs and nothing is downloaded. `make browser` installs both packages (as root) when they are missing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

CHROMIUM = Path(os.environ.get("STEPSERVE_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("STEPSERVE_CHROMEDRIVER", "/usr/bin/chromedriver"))
INSTALL_HINT = "run `make browser` (as root: apt-get install -y chromium chromium-driver)"


def missing() -> str | None:
    """Why the browser cannot start (a one-line instruction), or None when it can."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.is_file():
            return f"{path} is missing: {INSTALL_HINT}"
    return None


def headless_chromium(width: int = 1280, height: int = 1100) -> Any:
    """A started headless Chromium WebDriver; raises RuntimeError with the install hint when absent."""
    why = missing()
    if why is not None:
        raise RuntimeError(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"):
        opts.add_argument(arg)  # no sandbox: CI and this machine run as root, where Chromium's sandbox refuses
    opts.add_argument(f"--window-size={width},{height}")
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=opts)
