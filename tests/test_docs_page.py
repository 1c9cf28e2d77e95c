"""The interactive API reference at /docs: the vendored Swagger UI is the pinned build, served by
tagsmith under its Content-Security-Policy, and in headless Chromium against a real server it
lists every operation and runs one ("Try it out"), with no console error and no request leaving
the server's origin."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from shared.web.openapi import DOCS_STATIC
from tests.support.browser import chromium
from tests.support.servers import TagsmithServer

WAIT_S = 60
VENDORED = DOCS_STATIC / "swagger-ui"


def test_the_vendored_swagger_ui_is_the_pinned_build() -> None:
    note = (VENDORED / "VENDORED.md").read_text()
    sums = dict((name, digest) for digest, name in re.findall(r"^([0-9a-f]{64})  (\S+)$", note, re.M))
    assert set(sums) == {p.name for p in VENDORED.iterdir() if p.name != "VENDORED.md"}
    for name, digest in sums.items():
        assert hashlib.sha256((VENDORED / name).read_bytes()).hexdigest() == digest, name
    version = re.search(r"`swagger-ui-dist` \*\*([\d.]+)\*\*", note)
    assert version and f"swagger-ui-dist-{version.group(1)}.tgz" in note
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f"swagger-ui-dist {version.group(1)}" in readme


def test_docs_page_runs_only_local_files_under_the_csp(client: TestClient) -> None:
    response = client.get("/docs")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page, re.S)
    assert scripts and all(body.strip() == "" and 'src="docs/' in attributes for attributes, body in scripts)
    assert "<style" not in page and " style=" not in page and "http://" not in page and "https://" not in page
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "unsafe-inline" not in policy and "unsafe-eval" not in policy
    for asset, media in (("docs/swagger-ui/swagger-ui-bundle.js", "text/javascript"), ("docs/init.js", "text/javascript"),
                         ("docs/swagger-ui/swagger-ui.css", "text/css"), ("docs/page.css", "text/css")):
        assert f'"{asset}"' in page
        served = client.get("/" + asset)
        assert served.status_code == 200 and served.headers["content-type"].startswith(media), asset
    assert client.get("/docs/no-such-file.js").status_code == 404
    assert client.get("/docs?view=plain").text.count("<script") == 0
    assert client.get("/docs?view=other").status_code == 400


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    yield from chromium(tmp_path / "profile", height=2200, script_timeout=30, log_requests=True)


@pytest.mark.integration
def test_swagger_ui_lists_every_operation_and_tries_one(live_server: TagsmithServer, browser) -> None:  # type: ignore[no-untyped-def]
    import requests
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    schema = requests.get(live_server.base + "/openapi.json", timeout=10).json()
    operations = sum(len(ops) for ops in schema["paths"].values())
    wait = WebDriverWait(browser, WAIT_S)
    browser.get(live_server.base + "/docs")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) == operations)
    assert browser.find_element(By.CSS_SELECTOR, ".info .title").text.startswith("tagsmith")
    assert browser.find_elements(By.CSS_SELECTOR, "button.authorize")  # the API key schemes
    # Swagger UI writes each operation's id as operations-<tag>-<operationId>.
    for path, ops in schema["paths"].items():
        for op in ops.values():
            assert browser.find_elements(By.ID, f"operations-{op['tags'][0]}-{op['operationId']}"), path

    # Try GET /health from the page.
    health = browser.find_element(By.ID, "operations-ops-health")
    health.find_element(By.CSS_SELECTOR, ".opblock-summary-control").click()
    wait.until(lambda d: health.find_elements(By.CSS_SELECTOR, ".try-out__btn"))
    health.find_element(By.CSS_SELECTOR, ".try-out__btn").click()
    wait.until(lambda d: health.find_elements(By.CSS_SELECTOR, ".execute"))
    health.find_element(By.CSS_SELECTOR, ".execute").click()
    answer = wait.until(ec.visibility_of_element_located(
        (By.CSS_SELECTOR, "#operations-ops-health .live-responses-table tr.response")))
    assert answer.find_element(By.CSS_SELECTOR, ".response-col_status").text.strip() == "200"
    body = answer.find_element(By.CSS_SELECTOR, ".response-col_description").text
    assert re.search(r'\{\s*"status": "ok"\s*\}', body), body

    # Everything came from this server, and nothing went wrong in the console (a CSP refusal would).
    console = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
    assert console == [], console
    urls = [message["params"]["request"]["url"]
            for message in (json.loads(entry["message"])["message"] for entry in browser.get_log("performance"))
            if message["method"] == "Network.requestWillBeSent"]
    assert live_server.base + "/health" in urls and live_server.base + "/openapi.json" in urls
    # (the browser's own chrome:// pages show up too; only network schemes can leave the machine)
    elsewhere = [url for url in urls if url.startswith(("http:", "https:", "ws:", "wss:"))
                 and not url.startswith(live_server.base + "/")]
    assert elsewhere == [], elsewhere
