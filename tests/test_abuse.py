"""What an outside review broke against a running server, each case refused at its cause: images
that decode slowly, archives and paths that made 500s, weights that made non-numbers."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from starlette.testclient import TestClient

from shared.data import jobs
from shared.domain.services import Services
from shared.models.archive import pack
from shared.models.backbone import LITE0
from tests.support.api import record, run_queued_jobs, teach_cat
from tests.support.badinput import animated_webp_canvas, many_scans_jpeg, mpo_photo, parsing_bombs, rle8_bmp
from tests.support.photos import CAT, crops


def upload(data: bytes, name: str = "x.jpg") -> dict[str, tuple[str, bytes]]:
    return {"data": (name, data)}


def test_phone_photos_with_a_multi_picture_extension_are_jpegs(client: TestClient) -> None:
    added = client.post("/custom/add?image_id=phone", files=upload(mpo_photo()))
    assert added.status_code == 201 and added.json()["format"] == "JPEG"
    assert client.get("/custom/images/phone/original").headers["content-type"] == "image/jpeg"
    assert "cat" in {k["name"] for k in client.post("/predict", files=upload(mpo_photo())).json()["keywords"]}


@pytest.mark.parametrize(
    ("name", "data", "status", "code"),
    [("scans", many_scans_jpeg(300), 413, "too_many_scans"), ("rle", rle8_bmp(), 415, "slow_compression")],
)
def test_images_that_decode_slowly_are_refused_before_decoding(
    client: TestClient, services: Services, name: str, data: bytes, status: int, code: str
) -> None:
    for path in (f"/custom/add?image_id={name}", "/predict", "/custom/add_many"):
        response = client.post(path, files=upload(data, f"{name}.img"))
        body = response.json()
        row = body["images"][0] if path == "/custom/add_many" else body
        assert (row.get("status", response.status_code), row["error"]) == (status, code), path
    assert not services.registry.image_exists(name) and services.registry.image_count() == 0
    assert client.post("/custom/add?image_id=fine", files=upload(crops(CAT, 1, seed=1)[0])).status_code == 201


@pytest.mark.parametrize("path", ["/custom/tags/caf%E9", "/custom/versions/caf%FF", "/get_state?tag=caf%E9",
                                  "/custom/assign/img/positive/caf%E9"])
def test_text_that_is_not_utf8_in_the_url_is_refused(client: TestClient, services: Services, path: str) -> None:
    """Servers decode such escapes to replacement characters: it became the tag 'caf\ufffd'."""
    response = client.get(path)
    assert (response.status_code, response.json()["error"]) == (400, "invalid_encoding")
    assert services.registry.tags() == []
    assert client.get("/custom/tags/caf%C3%A9").json()["error"] == "unknown_tag"  # é in UTF-8 is fine


def test_concurrent_loads_never_pass_the_tag_limit(client: TestClient, services: Services) -> None:
    services.settings.max_tags = 5
    archives = [pack([record(f"load{i}-{t}") for t in range(5)], LITE0) for i in range(4)]

    def load(archive: bytes) -> int:
        return client.post("/set_state", files=upload(archive, "state.tar")).status_code

    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(load, archives))
    assert sorted(statuses) == [200, 409, 409, 409]
    assert len(services.registry.tags()) == 5
    stored = [key for key in services.store.list("models/")]
    assert len(stored) == 5  # the refused loads removed the versions they had stored


def test_finished_library_jobs_are_kept_minutes_not_a_week(client: TestClient, services: Services) -> None:
    """An add queues an embedding job whenever none is waiting: a client adding and deleting images
    made one every few adds, each about 7 KB of Redis, and they were all kept for TASK_TTL_S."""
    for i, data in enumerate(crops(CAT, 2, seed=71)):
        assert client.post(f"/custom/add?image_id=churn-{i}", files=upload(data)).status_code == 201
        [job] = services.queue.library.job_ids
        run_queued_jobs(services)
        assert client.get(f"/status/{job}").json()["status"] == "finished"  # still there for a poll
        assert client.delete(f"/custom/images/churn-{i}").status_code == 200
        for key in (f"rq:job:{job}", f"rq:results:{job}"):
            assert 0 < services.redis.ttl(key) <= jobs.LIBRARY_RESULT_TTL_S < services.settings.task_ttl_s


def test_finished_tasks_and_old_versions_do_not_pile_up(client: TestClient, services: Services) -> None:
    services.settings.keep_versions = 2
    teach_cat(client, services, positives=2, negatives_each=1)
    for _ in range(4):
        task = client.get("/custom/train/cat").json()["task_id"]
        run_queued_jobs(services)
    ttl = services.redis.ttl(f"rq:job:{task}")
    assert 0 < ttl <= services.settings.task_ttl_s  # kept for a week by default, not forever
    versions = client.get("/custom/versions/cat").json()
    assert [v["version"] for v in versions["versions"]] == [3, 4, 5] and versions["current"] == 5
    assert client.get("/custom/rollback/cat/1").status_code == 404
    loaded = client.post("/set_state", files=upload(client.get("/get_state").content, "s.tar")).json()
    assert loaded["loaded"][0]["version"] == 6
    assert [v["version"] for v in client.get("/custom/versions/cat").json()["versions"]] == [4, 5, 6]


EVIL = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}


def test_pages_of_other_sites_cannot_change_data(client: TestClient, services: Services) -> None:
    teach_cat(client, services, positives=2, negatives_each=1)
    state = client.get("/get_state").content
    attempts = [
        ("GET", "/custom/delete/cat", {"Sec-Fetch-Site": "cross-site"}, {}),  # an <img src> sends no Origin
        ("GET", "/custom/train/cat", {"Sec-Fetch-Site": "same-site"}, {}),  # another port of this host
        ("POST", "/set_state", {"Origin": "https://evil.example"}, {"files": upload(state, "s.tar")}),
        ("DELETE", "/custom/images/cat-0", EVIL, {}),
        ("POST", "/custom/add?image_id=evil", {"Origin": "null"}, {"files": upload(crops(CAT, 1, seed=9)[0])}),
        ("GET", "/custom/assign/cat-0/negative/cat", EVIL, {}),
    ]
    before = client.get("/custom/tags").json()
    for method, path, headers, kwargs in attempts:
        response = client.request(method, path, headers=headers, **kwargs)
        assert (response.status_code, response.json()["error"]) == (403, "cross_site_request"), path
    assert client.get("/custom/tags").json() == before and services.registry.image_exists("cat-0")
    assert not services.registry.image_exists("evil")
    # Reads from other sites are the browser's business (no CORS headers are sent); writes from the
    # page itself, and from programs that send neither header, work.
    assert client.get("/custom/tags", headers=EVIL).status_code == 200
    own = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
    assert client.get("/custom/assign/cat-0/negative/cat", headers=own).status_code == 200
    assert client.get("/custom/assign/cat-0/positive/cat", headers={"Sec-Fetch-Site": "none"}).status_code == 200
    assert client.get("/custom/delete/cat").status_code == 200


def test_pages_of_other_sites_cannot_ask_for_costly_answers(client: TestClient, services: Services) -> None:
    """A backup, a state archive, the ONNX export, the library's scores or suggestions cost much work:
    an ``<img src>`` on another site's page could have every visitor's browser ask for them again and
    again. From the page itself, a typed address or a program they come as before."""
    teach_cat(client, services, positives=2, negatives_each=1)
    costly = ["/backup", "/get_state", "/export/onnx", "/custom/library/export", "/custom/suggest/cat",
              "/custom/images/cat-0/similar"]
    for path in costly:
        for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}, EVIL):
            response = client.get(path, headers=headers)
            assert (response.status_code, response.json()["error"]) == (403, "cross_site_request"), (path, headers)
        # HEAD would run the whole GET and throw the answer away (a link checker probing /backup)
        head = client.head(path)
        assert head.status_code == 405 and "GET" in head.headers["allow"], (path, head.status_code)
    for path in ("/backup", "/custom/suggest/cat", "/custom/images/cat-0/similar"):
        for headers in ({"Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"}, {}):
            assert client.get(path, headers=headers).status_code == 200, (path, headers)
    assert client.get("/custom/images", headers=EVIL).status_code == 200  # ordinary reads: the browser's business


def test_requests_naming_another_host_are_refused(client: TestClient) -> None:
    """A page that rebinds its own name to this machine's address sends its own name as Host."""
    for path in ("/custom/tags", "/", "/custom/images"):
        response = client.get(path, headers={"Host": "rebound.evil.example:5000"})
        assert (response.status_code, response.json()["error"]) == (400, "host_not_allowed"), path
    assert client.get("/health", headers={"Host": "10.1.2.3:8000"}).status_code == 200  # probes use pod addresses
    assert client.get("/custom/tags", headers={"Host": "localhost:5000"}).status_code == 200
    assert client.get("/custom/tags", headers={"Host": "[::1]:5000"}).status_code == 200
    for host in ("localhost:evil.example", "[::1]evil.example", "localhost:5000:1", "[::1]:x"):  # no port after the name
        response = client.get("/custom/tags", headers={"Host": host})
        assert (response.status_code, response.json()["error"]) == (400, "host_not_allowed"), host
    from shared.core.settings import Settings
    from shared.web.origins import allowed_hosts

    assert allowed_hosts(Settings(allowed_hosts="http://tagsmith.lan,localhost")) == {"localhost", "127.0.0.1"}  # the bound address; not ''


def test_a_request_naming_two_hosts_is_refused(client: TestClient) -> None:
    """Which one would count? The last one had passed the host check while the first was 'evil'."""
    response = client.get("/custom/tags", headers=[("Host", "evil.example"), ("Host", "localhost")])
    assert (response.status_code, response.json()["error"]) == (400, "bad_request")


@pytest.mark.parametrize("name", ["Origin", "Sec-Fetch-Site"])
def test_a_write_naming_two_origins_is_refused(client: TestClient, services: Services, name: str) -> None:
    """An evil Origin followed by the server's own had passed the cross-site check (the last won)."""
    evil, own = {"Origin": ("https://evil.example", "http://testserver"),
                 "Sec-Fetch-Site": ("cross-site", "same-origin")}[name]
    response = client.get("/custom/assign/x-1/positive/twice", headers=[(name, evil), (name, own)])
    assert (response.status_code, response.json()["error"]) == (400, "bad_request")
    assert name in response.json()["message"] and "twice" not in services.registry.tags()


def test_head_does_not_run_the_writing_get_forms(client: TestClient, services: Services) -> None:
    """A link checker or a prefetcher sends HEAD as a harmless probe; Starlette answers HEAD by
    running the GET, so HEAD /custom/delete/cat deleted the tag."""
    teach_cat(client, services, positives=2, negatives_each=1)
    before = client.get("/custom/tags").json()
    for path, allowed in (("/custom/delete/cat", "DELETE, GET, POST"), ("/custom/train/cat", "GET, POST"),
                          ("/custom/unassign/cat-0/cat", "DELETE, GET, POST"),
                          ("/custom/assign/cat-0/negative/cat", "GET, POST"), ("/custom/rollback/cat/1", "GET, POST")):
        response = client.head(path)
        assert response.status_code == 405, path
        assert sorted(response.headers["allow"].split(", ")) == allowed.split(", "), path
    assert client.get("/custom/tags").json() == before
    assert client.head("/custom/tags").status_code == 200  # reading routes answer HEAD as before


def test_every_answer_carries_the_security_headers(client: TestClient) -> None:
    for path in ("/", "/docs", "/custom/tags", "/no/such/route"):
        headers = client.get(path).headers
        assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY", path
        assert "frame-ancestors 'none'" in headers["content-security-policy"] and "script-src" not in headers[
            "content-security-policy"]


def test_no_cache_keeps_data_answers(client: TestClient) -> None:
    """Answers may carry data behind an API key: a shared cache (a proxy) must store none of them."""
    client.post("/custom/add?image_id=img", files={"data": ("x.jpg", crops(CAT, 1, seed=0)[0])})
    for path in ("/custom/tags", "/custom/images", "/custom/images/img", "/get_state", "/ready", "/no/such/route"):
        assert client.get(path).headers["cache-control"] == "no-store", path
    for path in ("/custom/images/img/thumbnail", "/custom/images/img/original"):
        assert client.get(path).headers["cache-control"] == "private, no-cache", path
    page_file = client.get("/static/app.js")  # the same file for everyone, asked for again after an upgrade
    assert page_file.headers["cache-control"] == "no-cache" and "etag" in page_file.headers
    assert client.get("/static/app.js", headers={"If-None-Match": page_file.headers["etag"]}).status_code == 304


@pytest.mark.parametrize("name", sorted(parsing_bombs()))
def test_files_whose_framing_costs_far_more_than_their_size_are_refused_at_once(
    client: TestClient, services: Services, name: str
) -> None:
    started = time.process_time()
    response = client.post(f"/custom/add?image_id={name}", files=upload(parsing_bombs()[name], name))
    assert response.status_code == 413, response.text
    assert time.process_time() - started < 2  # it had taken 5-30 s of CPU, or gigabytes
    assert not services.registry.image_exists(name)


def test_an_animated_image_counts_its_decoder_canvases_in_the_budget() -> None:
    from shared.models.decoding import PixelBudget, decode_image

    budget, seen = PixelBudget(150_000_000), []
    real_hold = budget.hold

    def hold(pixels: int):  # type: ignore[no-untyped-def]
        seen.append(pixels)
        return real_hold(pixels)

    budget.hold = hold  # type: ignore[method-assign]
    decode_image(animated_webp_canvas(), 50_000_000, budget=budget)
    assert seen == [4 * 7000 * 7000]  # about 768 MB decoding, not the 196 MB one canvas holds
