"""What an outside review broke against a running server, each case refused at its cause: images
that decode slowly, archives and paths that made 500s, weights that made non-numbers."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from shared.domain.services import Services
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
