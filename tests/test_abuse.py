"""What an outside review broke against a running server, each case refused at its cause: images
that decode slowly, archives and paths that made 500s, weights that made non-numbers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from starlette.testclient import TestClient

from shared.domain.services import Services
from shared.models.archive import pack
from shared.models.backbone import LITE0
from tests.support.api import record, run_queued_jobs, teach_cat
from tests.support.badinput import many_scans_jpeg, mpo_photo, rle8_bmp
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
