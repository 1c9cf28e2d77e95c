"""Adding many images at once, unassigning, listing, thumbnails and deleting images."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from starlette.testclient import TestClient

from shared.domain.embeddings import embedding_key
from shared.domain.services import Services
from tests.support.api import add, teach_cat
from tests.support.photos import CAT, crops, encode, photo


def files(*items: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("data", (name, data, "image/jpeg")) for name, data in items]


def test_add_many_stores_each_file_and_reports_each_failure(client: TestClient, services: Services) -> None:
    cat_a, cat_b, coffee = *crops(CAT, 2, seed=0), crops("coffee", 1, seed=0)[0]
    response = client.post(
        "/custom/add_many?tag=cat&type=positive",
        files=files(("a.jpg", cat_a), ("b.jpg", cat_b), ("notes.txt", b"not an image"), ("again.jpg", coffee)),
        data={"image_id": ["a", "", "t", "a"]},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["added"], body["failed"]) == (2, 2)
    first, generated, text, duplicate = body["images"]
    assert first == {"filename": "a.jpg", "image_id": "a", "format": "JPEG", "width": first["width"],
                     "height": first["height"], "duplicate": False}
    assert len(generated["image_id"]) == 32
    assert (text["status"], text["error"], text["image_id"]) == (415, "not_an_image", "t")
    assert (duplicate["status"], duplicate["error"]) == (409, "image_exists")
    assert services.registry.examples("cat") == (sorted(["a", generated["image_id"]]), [])
    assert not services.registry.image_exists("t")


@pytest.mark.parametrize(
    ("query", "data", "code"),
    [("?tag=cat", None, "missing_parameter"), ("?tag=cat&type=maybe", None, "invalid_type"),
     ("", {"image_id": ["x", "y"]}, "image_ids_mismatch"), ("?tag=.bad&type=positive", None, "invalid_tag")],
)
def test_add_many_refuses_bad_requests_whole(
    client: TestClient, services: Services, query: str, data: dict | None, code: str  # type: ignore[type-arg]
) -> None:
    response = client.post(f"/custom/add_many{query}", files=files(("a.jpg", crops(CAT, 1, seed=0)[0])), data=data)
    assert response.status_code == 400 and response.json()["error"] == code
    assert services.registry.image_count() == 0


@pytest.mark.parametrize("path", ["/custom/add_many", "/custom/add", "/restore"])
def test_a_body_that_is_not_multipart_says_what_is_wrong(client: TestClient, services: Services, path: str) -> None:
    """add_many had answered "The multipart body cannot be parsed: 400: Invalid multipart data."."""
    body = b"--Bjunk\r\n\r\nxx\r\n--B--\r\n"  # no line end after the boundary
    response = client.post(path, content=body, headers={"Content-Type": "multipart/form-data; boundary=B"})
    answer = response.json()
    assert (response.status_code, answer["error"]) == (400, "malformed_body") and "400" not in answer["message"], answer
    assert services.registry.image_count() == 0


def test_add_many_refuses_an_image_id_sent_as_a_file(client: TestClient, services: Services) -> None:
    """An id sent as a file part came back as Python's text of the upload object."""
    photo = ("a.jpg", crops(CAT, 1, seed=0)[0])
    response = client.post("/custom/add_many", files=[("data", photo), ("image_id", ("x", b"cat"))])
    assert response.status_code == 400 and response.json()["error"] == "invalid_image_id", response.text
    assert "UploadFile" not in response.text and "text field" in response.json()["message"]
    assert services.registry.image_count() == 0


def test_both_upload_endpoints_read_a_file_name_that_is_not_utf8_alike(client: TestClient) -> None:
    """/custom/add read such a name as UTF-8 with replacement characters, /custom/add_many as
    Latin-1: one file got two names."""
    names = []
    for path, seed in (("/custom/add", 1), ("/custom/add_many", 2)):
        body = (b'--b\r\nContent-Disposition: form-data; name="data"; filename="\xe9t\xe9.jpg"\r\n'
                b"Content-Type: image/jpeg\r\n\r\n" + crops(CAT, 1, seed=seed)[0] + b"\r\n--b--\r\n")
        answer = client.post(path, content=body, headers={"Content-Type": "multipart/form-data; boundary=b"})
        assert answer.status_code in (200, 201), answer.text
        names.append(answer.json()["filename"] if path == "/custom/add" else answer.json()["images"][0]["filename"])
    assert names == ["été.jpg", "été.jpg"], names


def test_a_file_name_loses_what_shows_as_nothing(client: TestClient) -> None:
    """A name of Hangul fillers alone showed as a blank caption (the conjoining ones were kept)."""
    cases = (("\u115f\u1160\u3164.jpg", ".jpg"), ("\u115f", ""), ("a\u200bb\u202e.jpg", "ab.jpg"))
    for (sent, kept), data in zip(cases, crops(CAT, len(cases), seed=3), strict=True):
        answer = client.post("/custom/add", files={"data": (sent, data)})
        assert answer.status_code in (200, 201) and answer.json().get("filename", "") == kept, (sent, answer.text)


def test_add_many_limits_the_number_of_files(client: TestClient, services: Services,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(services.settings, "max_batch_files", 2)
    photo_bytes = crops(CAT, 1, seed=0)[0]
    response = client.post("/custom/add_many", files=files(*[(f"{i}.jpg", photo_bytes) for i in range(3)]))
    assert response.status_code == 400 and response.json()["error"] == "too_many_files"
    assert client.post("/custom/add_many").json()["error"] == "missing_field"


def test_unassign(client: TestClient, services: Services) -> None:
    add(client, crops(CAT, 1, seed=0)[0], "a")
    client.get("/custom/assign/a/positive/cat")
    body = client.post("/custom/unassign/a/cat").json()
    assert body == {"image_id": "a", "tag": "cat", "removed": "positive", "positives": 0, "negatives": 0}
    assert client.delete("/custom/unassign/a/cat").json()["removed"] is None
    assert client.get("/custom/unassign/nope/cat").json()["error"] == "unknown_image"
    assert client.get("/custom/unassign/a/dog").json()["error"] == "unknown_tag"


def test_list_and_describe_images(client: TestClient, services: Services) -> None:
    for i, data in enumerate(crops(CAT, 3, seed=0)):
        add(client, data, f"img-{i}")
    client.get("/custom/assign/img-1/negative/dog")
    page = client.get("/custom/images?limit=2").json()
    assert page["total"] == 3
    assert [i["image_id"] for i in page["images"]] == ["img-2", "img-1"]
    assert [i["image_id"] for i in client.get("/custom/images?limit=2&offset=2").json()["images"]] == ["img-0"]
    info = client.get("/custom/images/img-1").json()
    assert info["tags"] == {"dog": "negative"} and info["format"] == "JPEG" and info["width"] > 0
    assert client.get("/custom/images?limit=0").json()["error"] == "invalid_parameter"
    assert client.get("/custom/images/nope").status_code == 404


def test_images_stored_before_the_index_are_listed(services: Services) -> None:
    services.registry.commit_image("old", services.registry.reserve_image("old"), {"format": "JPEG", "width": 1, "height": 1, "bytes": 1})
    services.redis.delete(f"{services.settings.key_prefix}:images")  # as data written before the index
    assert services.registry.image_ids() == ["old"]


def test_thumbnail_and_original(client: TestClient, services: Services) -> None:
    original = encode(photo(CAT).rotate(90, expand=True), quality=90)  # 300 x 451
    add(client, original, "tall")
    response = client.get("/custom/images/tall/thumbnail?size=64")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(response.content)) as thumb:
        assert max(thumb.size) == 64 and thumb.size[1] > thumb.size[0]
    again = client.get("/custom/images/tall/thumbnail?size=64", headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304
    assert client.get("/custom/images/tall/thumbnail?size=5000").status_code == 400
    assert client.get("/custom/images/tall/original").content == original
    client.delete("/custom/images/tall")  # another image under the id, within the second: a new ETag
    add(client, encode(photo(CAT).convert("L").convert("RGB")), "tall")
    replaced = client.get("/custom/images/tall/thumbnail?size=64", headers={"If-None-Match": response.headers["etag"]})
    assert replaced.status_code == 200 and replaced.headers["etag"] != response.headers["etag"]
    assert client.get("/custom/images/nope/thumbnail").json()["error"] == "unknown_image"


def test_delete_image_removes_it_everywhere(client: TestClient, services: Services) -> None:
    assert teach_cat(client, services, positives=3, negatives_each=1)["status"] == "finished"
    key = embedding_key(services.spec.id, "cat-0")
    assert services.store.exists(key)
    body = client.delete("/custom/images/cat-0").json()
    assert body == {"image_id": "cat-0", "deleted": True, "removed_from": ["cat"]}
    assert "cat-0" not in services.registry.examples("cat")[0]
    assert not services.store.exists(key) and not services.store.exists("images/cat-0")
    assert client.get("/custom/images/cat-0").status_code == 404
    assert client.get("/custom/predict/cat-0").status_code == 404
    assert "cat-0" not in [i["image_id"] for i in client.get("/custom/images").json()["images"]]
    assert client.post("/custom/images/cat-1/delete").json()["deleted"] is True
    assert client.delete("/custom/images/cat-0").status_code == 404
    # The tag's model is kept and the image id can be used again.
    assert client.get("/custom/predict/cat/cat-2").json()["match"]
    add(client, crops(CAT, 1, seed=3)[0], "cat-0")
