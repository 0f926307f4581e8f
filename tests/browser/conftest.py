"""Browser fixtures.

- ``browser``: a headless Chromium (Debian's ``chromium`` and ``chromium-driver``) driven
  by Selenium, with page JavaScript turned off, so a test sees what an operator sees
  with scripts blocked. Selenium Manager cannot download drivers here, so the binaries
  are named explicitly. Skipped where they are missing, except in CI (``CI`` set), where
  their absence fails the test.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = ("chromium", "chromium-browser")
CHROMEDRIVER = ("chromedriver",)


def _find(names: tuple[str, ...]) -> str | None:
    return next((path for name in names if (path := shutil.which(name))), None)


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    """A Selenium ``webdriver.Chrome`` on headless Chromium, 1280x1500, JavaScript off."""
    chromium, driver = _find(CHROMIUM), _find(CHROMEDRIVER)
    if chromium is None or driver is None:
        message = ("Chromium and its driver are not installed "
                   "(Debian packages chromium and chromium-driver)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # No sandbox: CI runs the tests as root, where Chromium refuses to start with one.
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1280,1500"):
        options.add_argument(argument)
    # 2 = block: the console must read without scripts (WebDriver's own calls still work).
    options.add_experimental_option(
        "prefs", {"profile.managed_default_content_settings.javascript": 2})
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    yield chrome
    chrome.quit()
