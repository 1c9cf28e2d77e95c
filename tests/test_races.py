"""Races with deletes and rare inputs: each gives a clear 4xx JSON error and leaves the state consistent."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from httpx import Response
from starlette.testclient import TestClient

from shared.domain.images import forget_image
from shared.domain.services import Services
from shared.models.archive import pack
from shared.models.backbone import LITE0
from tests.support.api import add, record, run_queued_jobs
from tests.support.photos import CAT, crops


def test_rollback_with_a_unicode_digit_version_is_a_400(client: TestClient, services: Services) -> None:
    assert client.post("/set_state", files={"data": ("s.tar", pack([record("cat")], LITE0))}).status_code == 200
    for version in ("\u00b2", "\u2460", "1" * 5000):  # superscript two, circled one, over int's digit limit
        response = client.get(f"/custom/rollback/cat/{version}")
        assert response.status_code == 400, (version[:10], response.status_code, response.text)
        assert response.json()["error"] == "invalid_version"


def test_set_state_metrics_that_json_cannot_render_are_refused(client: TestClient, services: Services) -> None:
    model = record("cat")
    model = type(model)(**{**model.__dict__, "metrics": {"roc_auc": 0.9, "positives": 10**30}})
    response = client.post("/set_state", files={"data": ("s.tar", pack([model], LITE0))})
    assert response.status_code == 400 and response.json()["error"] == "invalid_archive", response.text
    for path in ("/custom/tags", "/custom/tags/cat", "/custom/versions/cat"):
        listing = client.get(path)
        assert listing.status_code in (200, 404), (path, listing.status_code, listing.text)


def test_assign_racing_a_delete_leaves_no_example_of_a_deleted_image(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    add(client, crops(CAT, 1, seed=0)[0], "a")
    registry = services.registry
    real_exists = registry.image_exists

    def exists_then_deleted(image_id: str) -> bool:
        """The image exists when assign checks, and is deleted right after (another request)."""
        found = real_exists(image_id)
        monkeypatch.setattr(registry, "image_exists", real_exists)
        assert client.delete(f"/custom/images/{image_id}").status_code == 200
        return found

    monkeypatch.setattr(registry, "image_exists", exists_then_deleted)
    response = client.get("/custom/assign/a/positive/cat")
    assert response.status_code in (200, 404)
    assert not registry.image_exists("a")
    assert registry.examples("cat") == ([], []), "an example of a deleted image (training fails, unassign 404s)"


def test_a_duplicate_deleted_before_the_add_answers_is_stored_anew_not_described_as_nulls(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An add of bytes stored already found the stored copy, which a delete then removed before
    the add described it: the answer was `duplicate: true` with null format and size, for an image
    that no longer existed. Now the bytes are stored anew."""
    data = crops(CAT, 1, seed=3)[0]
    first = client.post("/custom/add", files={"data": ("cat.jpg", data)}).json()
    registry = services.registry
    real = registry.image_with_content
    calls: list[str] = []

    def found_then_deleted(sha256: str) -> str | None:
        existing = real(sha256)
        if existing is not None and not calls:
            calls.append(existing)
            forget_image(services, existing)  # the delete lands between the lookup and the answer
        return existing

    monkeypatch.setattr(registry, "image_with_content", found_then_deleted)
    again = client.post("/custom/add", files={"data": ("cat.jpg", data)})
    assert calls == [first["image_id"]]
    body = again.json()
    assert again.status_code == 201 and body["duplicate"] is False and body["format"] == "JPEG", body
    assert body["image_id"] != first["image_id"] and body["width"] and body["height"]
    assert client.get(f"/custom/images/{body['image_id']}").status_code == 200
    assert client.get(f"/custom/images/{first['image_id']}").status_code == 404


def test_add_many_reports_the_id_of_an_image_it_stored(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the assignment fails after the image was stored, the result must not hide the stored image."""
    from shared.core.errors import Conflict

    def full(*args: object, **kwargs: object) -> None:
        raise Conflict("too_many_tags", "There are already 1 tags, the most allowed.")

    monkeypatch.setattr(services.registry, "assign", full)
    response = client.post("/custom/add_many?tag=cat&type=positive",
                           files=[("data", ("a.jpg", crops(CAT, 1, seed=0)[0], "image/jpeg"))])
    assert response.status_code == 200, response.text
    (row,) = response.json()["images"]
    assert row["error"] == "too_many_tags"
    assert services.registry.image_ids() == [], "the file was reported failed but its image was stored"
    assert list(services.store.list("images/")) == []


def test_a_tag_over_255_utf8_bytes_is_refused_not_a_500(client: TestClient, services: Services) -> None:
    """64 emoji or CJK Extension B letters are 256 bytes in UTF-8, over the local store's 255-byte file
    name limit: set_state answered 500 and every training of such a tag failed with an OSError."""
    tag = "\U00020000" * 64  # CJK Extension B letters (category Lo)
    response = client.post("/set_state", files={"data": ("s.tar", pack([record(tag)], LITE0))})
    assert response.status_code == 400, (response.status_code, response.text)
    add(client, crops(CAT, 1, seed=0)[0], "a")
    assert client.get(f"/custom/assign/a/positive/{tag}").json()["error"] == "invalid_tag"
    ok = "\U00020000" * 63 + "\u732b"  # 64 characters, 255 bytes
    assert client.post("/set_state", files={"data": ("s.tar", pack([record(ok)], LITE0))}).status_code == 200
    assert client.get(f"/custom/versions/{ok}").json()["current"] is not None


def test_an_id_reused_after_a_delete_never_gets_the_old_images_embedding(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delete that races the embedding of the same image (a GET /custom/predict/<id>, a training or
    a suggestion caching it), or that dies between Redis and the store, leaves the old image's
    embedding cached; an image added later under the same id was then trained and predicted with
    the old picture's embedding."""
    from shared.domain.embeddings import embedding_key

    add(client, crops(CAT, 1, seed=0)[0], "x")
    store, real_put = services.store, services.store.put
    key = embedding_key(services.spec.id, "x")

    def put(k: str, data: bytes) -> None:
        if k == key:  # the delete lands while the embedding is being computed
            monkeypatch.setattr(store, "put", real_put)
            assert client.delete("/custom/images/x").status_code == 200
        real_put(k, data)

    monkeypatch.setattr(store, "put", put)
    client.get("/custom/predict/x")  # 200 or 404: the image went meanwhile
    add(client, crops("coffee", 1, seed=0)[0], "x")  # a different picture under the same id
    assert not store.exists(key), "the new image 'x' would be embedded as the deleted cat"


def test_an_image_added_under_its_id_while_the_old_one_is_deleted_keeps_its_bytes(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delete forgets the image in Redis, then removes its bytes: an add of the same id in
    between stored its own bytes, which the delete then removed (an image no one could open, embed,
    back up or add again)."""
    from shared.data.keys import image_key

    add(client, crops(CAT, 1, seed=0)[0], "x")
    coffee = crops("coffee", 1, seed=0)[0]
    store, real_delete = services.store, services.store.delete
    during: list[int] = []

    def delete(key: str) -> None:
        if key == image_key("x") and not during:  # another request adds "x" right then
            during.append(client.post("/custom/add?image_id=x", files={"data": ("c.jpg", coffee, "image/jpeg")}).status_code)
        real_delete(key)

    monkeypatch.setattr(store, "delete", delete)
    assert client.delete("/custom/images/x").status_code == 200
    monkeypatch.setattr(store, "delete", real_delete)
    assert during == [409], "the id is reserved until the old image's files are gone"
    add(client, coffee, "x")  # and free again once they are
    assert client.get("/custom/images/x/original").content == coffee


def test_an_image_deleted_while_it_is_being_read_is_a_404_not_a_500(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    add(client, crops(CAT, 1, seed=0)[0], "x")
    registry, real_exists, real_image = services.registry, services.registry.image_exists, services.registry.image

    def exists_then_deleted(image_id: str) -> bool:
        found = real_exists(image_id)
        forget_image(services, image_id)  # another request deletes it
        return found

    def image_then_deleted(image_id: str) -> dict[str, str]:
        meta = real_image(image_id)
        forget_image(services, image_id)
        return meta

    monkeypatch.setattr(registry, "image_exists", exists_then_deleted)
    response = client.get("/custom/predict/x")
    assert response.status_code == 404, response.text
    monkeypatch.setattr(registry, "image_exists", real_exists)
    for path in ("/custom/images/x/original", "/custom/images/x/thumbnail"):
        add(client, crops(CAT, 1, seed=0)[0], "x")
        monkeypatch.setattr(registry, "image", image_then_deleted)
        response = client.get(path)
        monkeypatch.setattr(registry, "image", real_image)
        assert response.status_code == 404, (path, response.text)


def test_versions_a_failed_tag_delete_left_behind_never_come_back(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delete forgets the tag in Redis, then removes its archives; when the store fails (or the
    process dies) in between, the archives stay — but not as versions of the tag made anew."""
    from shared.data.store import StoreUnavailable

    state = pack([record("cat")], LITE0)
    for _ in range(2):
        assert client.post("/set_state", files={"data": ("s.tar", state)}).status_code == 200  # v1, v2

    def store_down(key: str) -> None:
        raise StoreUnavailable("the store is down")

    with monkeypatch.context() as patch:
        patch.setattr(services.store, "delete", store_down)
        assert client.post("/custom/delete/cat").status_code == 503
    assert sorted(services.store.list("models/cat/")) == ["models/cat/v1.tar", "models/cat/v2.tar"]

    assert client.post("/set_state", files={"data": ("s.tar", state)}).json()["loaded"][0]["version"] == 3
    listing = client.get("/custom/versions/cat").json()
    assert [v["version"] for v in listing["versions"]] == [3] and listing["current"] == 3
    response = client.get("/custom/rollback/cat/2")
    assert response.status_code == 404 and response.json()["error"] == "unknown_version"
    assert client.post("/custom/delete/cat").status_code == 200  # a delete that completes removes them all
    assert list(services.store.list("models/cat/")) == []


def test_a_set_state_the_store_fails_adds_no_versions(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.data.store import StoreUnavailable

    real_put, puts = services.store.put, []

    def second_put_fails(key: str, data: bytes) -> None:
        puts.append(key)
        if len(puts) == 2:
            raise StoreUnavailable("the store went down")
        real_put(key, data)

    monkeypatch.setattr(services.store, "put", second_put_fails)
    response = client.post("/set_state", files={"data": ("s.tar", pack([record("cat"), record("dog")], LITE0))})
    assert response.status_code == 503, response.text
    monkeypatch.setattr(services.store, "put", real_put)
    assert list(services.store.list("models/")) == []
    assert client.get("/custom/tags").json()["tags"] == []


def test_an_example_deleted_while_its_tag_trains_is_left_out_not_a_failed_training(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deleting one of a tag's images while the tag trains (the worker has read the examples but not
    yet the image's bytes) failed the whole training with "Training failed: ObjectNotFound(...)"."""
    from tests.support.api import run_queued_jobs

    for i, data in enumerate(crops(CAT, 3, seed=4)):
        add(client, data, f"cat-{i}")
        assert client.get(f"/custom/assign/cat-{i}/positive/cat").status_code == 200
    for i, data in enumerate(crops("coffee", 2, seed=4)):
        add(client, data, f"cup-{i}")
        assert client.get(f"/custom/assign/cup-{i}/negative/cat").status_code == 200
    task = client.get("/custom/train/cat").json()["task_id"]

    registry = services.registry
    real_examples = registry.examples

    def examples_then_deleted(tag: str) -> tuple[list[str], list[str]]:
        """The worker reads the examples, then another request deletes one of the images."""
        found = real_examples(tag)
        monkeypatch.setattr(registry, "examples", real_examples)
        assert client.delete("/custom/images/cat-2").status_code == 200
        return found

    monkeypatch.setattr(registry, "examples", examples_then_deleted)
    run_queued_jobs(services)
    status = client.get(f"/status/{task}").json()
    assert status["status"] == "finished", status.get("error")
    metrics = status["result"]["metrics"]
    assert (metrics["positives"], metrics["negatives"]) == (2, 2)


def test_suggestions_leave_out_an_image_deleted_while_they_are_ranked(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unlabelled image deleted by another request after suggest listed the candidates made the
    whole /custom/suggest/<tag> answer 404 not_found (its bytes were gone when it was embedded)."""
    from tests.support.api import run_queued_jobs

    for i, data in enumerate(crops(CAT, 2, seed=5)):
        add(client, data, f"cat-{i}")
    add(client, crops("coffee", 1, seed=5)[0], "cup")
    client.get("/custom/assign/cat-0/positive/cat")
    client.get("/custom/assign/cup/negative/cat")
    client.get("/custom/train/cat")
    run_queued_jobs(services)
    add(client, crops("coffee", 1, seed=6)[0], "gone")

    registry = services.registry
    real_ids = registry.image_ids

    def ids_then_deleted(*args: int) -> list[str]:
        found = real_ids(*args)
        monkeypatch.setattr(registry, "image_ids", real_ids)
        assert client.delete("/custom/images/gone").status_code == 200
        return found

    monkeypatch.setattr(registry, "image_ids", ids_then_deleted)
    response = client.get("/custom/suggest/cat")
    assert response.status_code == 200, response.text
    body = response.json()
    listed = {s["image_id"] for s in [*body["uncertain"], *body["likely_positive"]]}
    assert body["candidates"] == 1 and listed <= {"cat-1"}  # ranked without the deleted one


def test_a_tag_deleted_while_a_state_archive_loads_is_not_left_pointing_at_nothing(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delete removed the archive the load had just stored, and the load then published a
    pointer to it: listings and exports answered 404 for every tag until the tag was deleted again."""
    services.registry.commit_image("img", services.registry.reserve_image("img"), {"format": "JPEG", "width": 1, "height": 1, "bytes": 1})
    services.registry.assign("img", "dog", "positive")
    real_put, deleted = services.store.put, []

    def put_then_the_tag_is_deleted(key: str, data: bytes) -> None:
        real_put(key, data)
        if key.startswith("models/dog/") and not deleted:
            deleted.append(key)
            assert client.get("/custom/delete/dog").status_code == 200  # another request, between the steps

    monkeypatch.setattr(services.store, "put", put_then_the_tag_is_deleted)
    response = client.post("/set_state", files={"data": ("s.tar", pack([record("cat"), record("dog")], LITE0))})
    assert (response.status_code, response.json()["error"]) == (409, "tag_deleted")
    monkeypatch.setattr(services.store, "put", real_put)
    assert services.registry.models() == {} and list(services.store.list("models/")) == []
    assert client.get("/get_state").status_code == 200


def test_an_image_replaced_while_it_is_embedded_keeps_no_embedding_of_the_old_one(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delete and a new image under the same id, landing while the old bytes were embedded: the
    old image's vector was cached for the new one, and its predictions and trainings used it."""
    from shared.data.keys import embedding_key

    add(client, crops(CAT, 1, seed=1)[0], "e")
    coffee = crops("coffee", 1, seed=1)[0]
    real_put = services.store.put

    def replaced_meanwhile(key: str, data: bytes) -> None:
        if key == embedding_key(LITE0.id, "e"):
            monkeypatch.setattr(services.store, "put", real_put)
            assert client.delete("/custom/images/e").status_code == 200
            add(client, coffee, "e")
        real_put(key, data)

    monkeypatch.setattr(services.store, "put", replaced_meanwhile)
    assert client.get("/custom/predict/e").status_code == 200  # embeds the cat (its bytes were read first)
    assert not services.store.exists(embedding_key(LITE0.id, "e"))  # not kept for the coffee
    client.get("/custom/predict/e")
    from shared.domain.embeddings import embed_stored_images
    from shared.domain.predictions import prepare_upload

    cached = embed_stored_images(services, ["e"])[0]
    fresh = services.backbone.embed_pixels(prepare_upload(services, coffee, False)[0][None]).vectors[0]
    assert abs(cached - fresh).max() < 1e-4


def test_a_thumbnail_made_while_its_image_is_replaced_is_not_kept(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    from shared.data.keys import thumbnail_key
    from tests.support.photos import encode

    add(client, encode(Image.new("RGB", (600, 400), (255, 0, 0))), "t")
    blue = encode(Image.new("RGB", (600, 400), (0, 0, 255)))
    real_put = services.store.put

    def replaced_meanwhile(key: str, data: bytes) -> None:
        if key == thumbnail_key("t", 256):
            monkeypatch.setattr(services.store, "put", real_put)
            assert client.delete("/custom/images/t").status_code == 200
            add(client, blue, "t")
        real_put(key, data)

    monkeypatch.setattr(services.store, "put", replaced_meanwhile)
    assert client.get("/custom/images/t/thumbnail?size=200").status_code == 200
    assert not services.store.exists(thumbnail_key("t", 256))
    again = client.get("/custom/images/t/thumbnail?size=200")
    import io

    assert Image.open(io.BytesIO(again.content)).convert("RGB").getpixel((10, 10))[2] > 200  # blue, not red


def test_a_rollback_racing_the_pruning_of_its_tag_never_points_at_a_removed_archive(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A load prunes the tag's oldest version after publishing; a rollback to that version landing
    between the pruning's look at the current version and its delete was published, then its
    archive removed (the tag silently left out of every prediction)."""
    from shared.data.keys import model_key
    from shared.domain import catalog

    monkeypatch.setattr(services, "settings", services.settings.model_copy(update={"keep_versions": 1}))
    monkeypatch.setattr(catalog, "VERSIONS_WAIT_S", 0.5)
    load = pack([record("cat")], LITE0)
    for _ in range(2):
        assert client.post("/set_state", files={"data": ("s.tar", load)}).status_code == 200
    store, real_delete = services.store, services.store.delete
    answers: list[int] = []

    def delete(key: str) -> None:
        if key == model_key("cat", 1) and not answers:  # a rollback to v1 arrives right then
            answers.append(client.get("/custom/rollback/cat/1").status_code)
        real_delete(key)

    monkeypatch.setattr(store, "delete", delete)
    assert client.post("/set_state", files={"data": ("s.tar", load)}).status_code == 200  # v3; v1 is pruned
    monkeypatch.setattr(store, "delete", real_delete)
    assert answers == [503], "the rollback waits for the pruning, then gives up with a clear error"
    current = services.registry.model("cat")
    assert current is not None and store.exists(current.key), "the current version's archive was removed"
    assert client.get("/custom/rollback/cat/1").json()["error"] == "unknown_version"  # pruned, and said so


def test_pruning_after_a_publish_never_removes_a_later_version_not_yet_published(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two loads (or trainings) of one tag save v1 and v2; v1 publishes first and prunes. With
    ``keep_versions`` 0 the pruning removed v2, which then published: the tag pointed at a removed
    archive (listed as version 2, left out of every prediction, ``/get_state`` 404)."""
    from shared.domain import catalog

    monkeypatch.setattr(services, "settings", services.settings.model_copy(update={"keep_versions": 0}))
    first, second = (catalog.save_version(services, record("cat")) for _ in range(2))
    catalog.publish(services, [first], epochs={})
    assert catalog.prune_versions(services, "cat") == []
    catalog.publish(services, [second], epochs={})  # the second load's publish comes now
    assert client.get("/get_state?tag=cat").status_code == 200
    assert catalog.prune_versions(services, "cat") == [1]  # older than the current one: pruned
    assert [v["version"] for v in client.get("/custom/versions/cat").json()["versions"]] == [2]


def test_a_load_that_a_newer_version_overtook_says_it_was_not_published(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    load = pack([record("cat")], LITE0)
    add(client, crops(CAT, 1, seed=0)[0], "img")  # the tag exists: no load below waits to create it
    assert client.get("/custom/assign/img/positive/cat").status_code == 200
    registry, real_publish = services.registry, services.registry.publish
    overtaken: list[object] = []

    def publish(*args: object, **kwargs: object) -> list[str]:
        if not overtaken:  # another load of the tag saves a later version and publishes it first
            overtaken.append(None)
            overtaken[0] = client.post("/set_state", files={"data": ("s.tar", load)}).json()
        return real_publish(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(registry, "publish", publish)
    answer = client.post("/set_state", files={"data": ("s.tar", load)}).json()
    assert [(m["version"], m["published"]) for m in answer["loaded"]] == [(1, False)]
    assert overtaken == [{"loaded": [{**overtaken[0]["loaded"][0], "version": 2, "published": True}]}]  # type: ignore[index]
    assert registry.model("cat").version == 2  # type: ignore[union-attr]


def test_a_stored_version_that_cannot_be_read_leaves_the_other_tags_predicting(
    client: TestClient, services: Services
) -> None:
    load = pack([record("cat"), record("dog")], LITE0)
    assert client.post("/set_state", files={"data": ("s.tar", load)}).status_code == 200
    dog = services.registry.model("dog")
    assert dog is not None
    services.store.put(dog.key, b"damaged")  # a disk error, or an archive no release can read
    services.registry.publish([dog], epochs={}, rollback=True)  # a new generation: the heads are read again
    answer = client.post("/predict/custom", files={"data": ("p.jpg", crops(CAT, 1, seed=2)[0], "image/jpeg")})
    assert answer.status_code == 200, answer.text
    assert set(answer.json()["custom"]) == {"cat"}
    listing = client.get("/custom/tags")
    assert listing.status_code == 200 and {t["tag"] for t in listing.json()["tags"]} == {"cat", "dog"}


def test_a_restored_date_landing_after_a_delete_leaves_no_ghost_image(client: TestClient, services: Services) -> None:
    """A restore adds an image, then sets its date: a delete in between left a hash holding only the
    date (an image listed, never stored, its id taken for good)."""
    add(client, crops(CAT, 1, seed=0)[0], "x")
    assert client.delete("/custom/images/x").status_code == 200
    services.registry.set_created_at("x", "2020-01-01T00:00:00Z", 1.0)  # the restore's next step
    assert not services.registry.image_exists("x")
    add(client, crops(CAT, 1, seed=1)[0], "x")  # the id is free


def test_a_tag_deleted_while_it_is_loaded_again_keeps_the_new_versions_archive(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delete forgets the tag in Redis, then removes its archives: a load of the tag in between
    published a new version whose archive the delete then removed too."""
    from shared.data.keys import model_prefix

    load = pack([record("cat")], LITE0)
    assert client.post("/set_state", files={"data": ("s.tar", load)}).status_code == 200
    store, real_list = services.store, services.store.list
    reloaded: list[int] = []

    def listing(prefix: str) -> object:
        if prefix == model_prefix("cat") and not reloaded:  # the tag is loaded again right then
            reloaded.append(0)
            reloaded[0] = client.post("/set_state", files={"data": ("s.tar", load)}).status_code
        return real_list(prefix)

    monkeypatch.setattr(store, "list", listing)
    assert client.get("/custom/delete/cat").status_code == 200
    monkeypatch.setattr(store, "list", real_list)
    assert reloaded == [200]
    current = services.registry.model("cat")
    assert current is not None and current.version == 2 and store.exists(current.key)
    assert not store.exists(model_prefix("cat") + "v1.tar")


def test_a_lapsed_reservation_released_late_leaves_the_next_holders_alone(services: Services) -> None:
    """An add or a delete that outlived its id's reservation (two minutes) gave back the
    reservation another add of that id held by then: two commits of one id could follow."""
    from shared.core.errors import Conflict

    registry = services.registry
    slow = registry.reserve_image("z")
    registry.redis.delete(f"{services.settings.key_prefix}:reserve:z")  # it lapsed
    next_holder = registry.reserve_image("z")
    registry.release_image("z", slow)  # the slow one ends
    with pytest.raises(Conflict):
        registry.reserve_image("z")  # still the next holder's
    registry.release_image("z", next_holder)
    registry.release_image("z", registry.reserve_image("z"))



def test_two_lookalike_tags_created_at_once_are_not_both_kept(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """'cop' in Latin letters and 'сор' in Cyrillic ones, created by two requests at once: each had
    checked that no lookalike existed before either was created, and both were kept. Now the check
    and the creation of a new tag run under one lock: the later request is refused."""
    add(client, crops(CAT, 1, seed=0)[0], "a")
    registry = services.registry
    real_assign = registry.assign
    answers: list[Response] = []

    def assign_while_another_request_creates_a_lookalike(image_id: str, tag: str, *args: Any, **kwargs: Any) -> bool:
        monkeypatch.setattr(registry, "assign", real_assign)
        other = threading.Thread(target=lambda: answers.append(client.get("/custom/assign/a/negative/\u0441\u043e\u0440")))
        other.start()
        other.join(1.0)  # without the lock it is answered meanwhile; with it, it waits for this one
        return real_assign(image_id, tag, *args, **kwargs)

    monkeypatch.setattr(registry, "assign", assign_while_another_request_creates_a_lookalike)
    assert client.get("/custom/assign/a/positive/cop").status_code == 200
    deadline = time.monotonic() + 15
    while not answers and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [(r.status_code, r.json().get("error")) for r in answers] == [(400, "invalid_tag")]
    assert registry.tags() == ["cop"]


def test_files_of_adds_and_deletes_that_never_finished_are_removed(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes stored by an add whose commit failed (or whose process died before it), and the files
    of a delete whose store failed midway, stayed for good: generated ids are never used again,
    and a deleted photo stayed on disk while a retried delete said 404."""
    import redis

    from shared.data.keys import embedding_key, image_key
    from shared.data.store import StoreUnavailable
    from shared.domain.images import remove_unlinked_files

    registry, store = services.registry, services.store
    photos = crops(CAT, 4, seed=30)

    def redis_failed(*args: Any, **kwargs: Any) -> None:
        raise redis.ConnectionError("Redis went away")

    with monkeypatch.context() as failing:  # an add whose commit fails after its bytes are stored
        failing.setattr(registry, "commit_image", redis_failed)
        assert client.post("/custom/add?image_id=uncommitted", files={"data": ("a.jpg", photos[0])}).status_code == 503
    assert store.exists(image_key("uncommitted")) and not registry.image_exists("uncommitted")

    token = registry.reserve_image("died")  # an add whose process died between its bytes and its commit
    store.put(image_key("died"), photos[1])
    registry.release_image("died", token)  # as its reservation lapses

    add(client, photos[2], "deleted")
    store.put(embedding_key(services.spec.id, "deleted"), b"vector")
    def store_failed(key: str) -> None:
        raise StoreUnavailable("the disk went away")

    with monkeypatch.context() as failing:  # a delete whose store fails midway
        failing.setattr(store, "delete", store_failed)
        assert client.delete("/custom/images/deleted").status_code == 503
    assert client.delete("/custom/images/deleted").status_code == 404 and store.exists(image_key("deleted"))

    add(client, photos[3], "busy")  # stored and kept; and an add in progress is left alone
    in_progress = registry.reserve_image("in-progress")
    store.put(image_key("in-progress"), photos[0])

    run_queued_jobs(services)  # the library's embedding job, queued by the add above, removes them
    for image_id in ("uncommitted", "died", "deleted"):
        assert not store.exists(image_key(image_id)), image_id
    assert not store.exists(embedding_key(services.spec.id, "deleted"))
    assert store.exists(image_key("busy")) and store.exists(image_key("in-progress"))
    assert registry.unlinked(10) == ["in-progress"]
    registry.commit_image("in-progress", in_progress, {"sha256": "x"})
    assert registry.unlinked(10) == [] and remove_unlinked_files(services) == 0
    registry.release_image("in-progress", in_progress)


def test_a_version_stored_by_a_load_that_died_never_comes_back(client: TestClient, services: Services) -> None:
    """A load killed after storing 'dog' v1 and before publishing it: a user later made an unrelated
    tag 'dog', whose versions then listed v1 (the dead load's model, with its origin), and a
    rollback made it current. Such a version is no version of the tag; it is removed once it has
    waited ``UNSETTLED_AFTER_S``, unless its tag's current version has passed it."""
    from shared.data.keys import model_key
    from shared.domain import catalog

    catalog.save_version(services, record("dog"))  # as load_state does; killed before it publishes
    assert services.store.exists(model_key("dog", 1))
    add(client, crops(CAT, 1, seed=40)[0], "pup")
    assert client.get("/custom/assign/pup/positive/dog").status_code == 200  # an unrelated 'dog'
    assert client.get("/custom/versions/dog").json()["versions"] == []
    assert client.get("/custom/rollback/dog/1").json()["error"] == "unknown_version"
    assert catalog.remove_unsettled_versions(services) == 0  # not yet: a load may still be storing
    assert catalog.remove_unsettled_versions(services, older_than=0) == 1
    assert not services.store.exists(model_key("dog", 1))

    loaded = client.post("/set_state", files={"data": ("s.tar", pack([record("cat")], LITE0))}).json()
    assert loaded["loaded"][0]["published"] and catalog.remove_unsettled_versions(services, older_than=0) == 0
    assert [v["version"] for v in client.get("/custom/versions/cat").json()["versions"]] == [1]


def test_an_add_whose_reservation_lapsed_is_not_committed(client: TestClient, services: Services,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A put slower than the id's reservation (a slow S3, retried): the worker's sweep found the id
    free and removed the bytes, then the add committed anyway, listing an image with no bytes."""
    from shared.data.keys import image_key
    from shared.domain.images import remove_unlinked_files

    registry, real_put = services.registry, services.store.put

    def slow_put(key: str, data: bytes) -> None:
        real_put(key, data)
        if key == image_key("slow"):  # the reservation lapses, and the sweep runs meanwhile
            registry.redis.delete(registry._k("reserve", "slow"))
            assert remove_unlinked_files(services) == 1

    monkeypatch.setattr(services.store, "put", slow_put)
    answer = client.post("/custom/add?image_id=slow", files={"data": ("s.jpg", crops(CAT, 1, seed=50)[0])})
    assert answer.status_code == 409 and answer.json()["error"] == "changed_meanwhile", answer.text
    assert not registry.image_exists("slow") and not services.store.exists(image_key("slow"))


def test_a_load_published_is_kept_whatever_fails_after_its_publication(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queueing the library's rescore failed after the publication (a Redis blip), and the load,
    taking it for its own failure, removed the archives its tags now pointed at. The publication
    settles the versions in the same step, so a crash right after it hides nothing either."""
    import redis

    def blip(*args: Any, **kwargs: Any) -> None:
        raise redis.ConnectionError("Redis went away for a moment")

    monkeypatch.setattr(services.queue, "submit_rescore", blip)
    answer = client.post("/set_state", files={"data": ("s.tar", pack([record("cat")], LITE0))})
    assert answer.status_code == 200 and answer.json()["loaded"][0]["published"], answer.text
    current = services.registry.model("cat")
    assert current is not None and services.store.exists(current.key)
    assert not services.registry.unsettled([current.key])
    assert client.get("/get_state?tag=cat").status_code == 200


def test_an_assignment_racing_a_tag_delete_does_not_make_the_tag_again_past_the_rules(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Assigning to a tag that exists skipped the new-tag rules; when the tag was deleted (and a
    lookalike made) between that check and the assignment, the assignment made it anew beside
    its lookalike: "cop" and Cyrillic "сор" both listed."""
    add(client, crops(CAT, 1, seed=7)[0], "img")
    assert client.get("/custom/assign/img/positive/cop").status_code == 200
    registry = services.registry
    real_tags_exist = registry.tags_exist

    def exists_then_replaced(tags: list[str]) -> list[bool]:
        found = real_tags_exist(tags)
        monkeypatch.setattr(registry, "tags_exist", real_tags_exist)
        assert client.get("/custom/delete/cop").status_code == 200
        assert client.get("/custom/assign/img/positive/\u0441\u043e\u0440").status_code == 200
        return found

    monkeypatch.setattr(registry, "tags_exist", exists_then_replaced)
    response = client.get("/custom/assign/img/negative/cop")
    assert response.status_code == 400 and "looks like the tag" in response.json()["message"], response.text
    assert registry.tags() == ["\u0441\u043e\u0440"]
