"""The web page in headless Chromium against a real server: upload (file chooser and drag and
drop), mark examples, train, see the version's metrics, get suggestions, try a prediction."""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.photos import CAT, OTHERS, crops
from tests.support.servers import TagsmithServer

pytestmark = pytest.mark.integration  # starts servers or processes, or loads the backbone

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
WAIT_S = 120

# Builds File objects from base64 strings and drops them on an element, as a person dragging
# files from their desktop would.
DROP_FILES = """
const [selector, files] = arguments;
const transfer = new DataTransfer();
for (const [name, b64] of files) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
}
const target = document.querySelector(selector);
for (const type of ["dragenter", "dragover", "drop"]) {
  target.dispatchEvent(new DragEvent(type, { bubbles: true, cancelable: true, dataTransfer: transfer }));
}
"""


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
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
                 "--disable-dev-shm-usage", "--window-size=1280,2200", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def test_upload_assign_train_and_predict_in_the_page(live_server: TagsmithServer, browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT_S)
    cats = []
    for i, data in enumerate(crops(CAT, 5, seed=11)):
        path = tmp_path / f"web-cat-{i}.jpg"
        path.write_bytes(data)
        cats.append(path)
    others = [(f"web-{name}-{i}.jpg", base64.b64encode(data).decode())
              for name in OTHERS for i, data in enumerate(crops(name, 1, seed=12))]
    unlabelled = [tmp_path / "web-extra-cat.jpg", tmp_path / "web-extra-rocket.jpg"]
    unlabelled[0].write_bytes(crops(CAT, 1, seed=13)[0])
    unlabelled[1].write_bytes(crops("rocket", 1, seed=13)[0])

    browser.get(live_server.base + "/")
    tag = wait.until(ec.element_to_be_clickable((By.ID, "tag")))
    tag.clear()
    tag.send_keys("web cat")
    wait.until(ec.text_to_be_present_in_element((By.ID, "counts"), "0 positive · 0 negative"))

    # Upload: cats through the file chooser, the other photos by drag and drop.
    browser.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in cats))
    wait.until(ec.text_to_be_present_in_element((By.ID, "upload-status"), "Added 5 images"))
    browser.execute_script(DROP_FILES, "#drop", others)
    wait.until(ec.text_to_be_present_in_element((By.ID, "upload-status"), f"Added {len(others)} images"))
    cards = browser.find_elements(By.CSS_SELECTOR, "#gallery .card")
    assert len(cards) >= len(cats) + len(others)
    wait.until(lambda d: all(d.execute_script("return arguments[0].naturalWidth", img) > 0
                             for img in d.find_elements(By.CSS_SELECTOR, "#gallery .card img")))

    # Mark examples: each card's caption is its id; uploaded ids are generated, so find by thumbnail order.
    ids = browser.execute_script(
        "return [...document.querySelectorAll('#gallery .card')].map(c => c.dataset.imageId)")
    newest_first = ids[: len(cats) + len(others)]
    dropped, chosen = newest_first[: len(others)], newest_first[len(others):]
    for image_id in chosen:
        browser.find_element(By.CSS_SELECTOR, f'#gallery .card[data-image-id="{image_id}"] .pos').click()
    for image_id in dropped:
        browser.find_element(By.CSS_SELECTOR, f'#gallery .card[data-image-id="{image_id}"] .neg').click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "counts"), f"5 positive · {len(others)} negative"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#gallery .card.positive")) == 5
    assert len(browser.find_elements(By.CSS_SELECTOR, "#gallery .card.negative")) == len(others)

    # Two more images stay unlabelled: the suggestions should rank them once the model exists.
    browser.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in unlabelled))
    wait.until(ec.text_to_be_present_in_element((By.ID, "upload-status"), "Added 2 images"))

    # Train and watch the progress until version 1 shows in the table with its metrics.
    wait.until(ec.element_to_be_clickable((By.ID, "train"))).click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "progress-text"), "Trained version 1"))
    row = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, '#versions tr.current[data-version="1"]')))
    cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
    assert cells[0] == "v1" and cells[2] == f"5 + / {len(others)} −"
    assert float(cells[3]) >= 0.9  # ROC AUC

    # The current version as one ONNX file for devices: a plain link that downloads it.
    link = browser.find_element(By.ID, "export-onnx")
    assert link.get_attribute("href") == live_server.base + "/export/onnx?tag=web%20cat" and "v1" in link.text
    size = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0]).then((r) => r.ok ? r.arrayBuffer() : Promise.reject(r.status))"
        ".then((b) => done(b.byteLength), (e) => done(String(e)));", link.get_attribute("href"))
    assert isinstance(size, int) and size > 1_000_000, size

    # Label these next: the unlabelled cat is a likely positive.
    wait.until(ec.visibility_of_element_located((By.ID, "suggest-panel")))
    likely = browser.execute_script(
        "return [...document.querySelectorAll('#likely .card')].map(c => c.dataset.imageId)")
    extra_cat = browser.execute_script(
        "return [...document.querySelectorAll('#gallery .card')].map(c => c.dataset.imageId)")[1]
    assert extra_cat in likely

    # Try a prediction on a new photo.
    probe = tmp_path / "probe-cat.jpg"
    probe.write_bytes(crops(CAT, 1, seed=14)[0])
    browser.find_element(By.ID, "predict-file").send_keys(str(probe))
    result = wait.until(ec.visibility_of_element_located((By.ID, "prediction-result")))
    matches = [li.text for li in result.find_elements(By.CSS_SELECTOR, "li.match")]
    assert any(text.startswith("web cat ✓") for text in matches), matches
    assert any(text.startswith("cat ") for text in matches), matches  # base keyword
    assert not browser.find_element(By.ID, "message").text.startswith("HTTP")

    browser.execute_script("window.scrollTo(0, 0)")
    shot = tmp_path / "webpage.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
