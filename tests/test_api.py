"""The seed API through the in-process gateway, on a real Redis and a local store."""

from __future__ import annotations

import io
import tarfile

import pytest
from starlette.testclient import TestClient

from shared.domain.services import Services
from tests.support.api import add, run_queued_jobs, teach_cat
from tests.support.photos import CAT, OTHERS, crops


def test_add_generates_an_id_and_refuses_reuse(client: TestClient, services: Services) -> None:
    photo, other = crops(CAT, 2, seed=0)
    generated = add(client, photo)
    assert len(generated) == 32
    assert add(client, photo, "my-cat") == "my-cat"
    again = client.post("/custom/add?image_id=my-cat", files={"data": ("x.jpg", other)})
    assert again.status_code == 409
    assert again.json()["error"] == "image_exists"
    # The same bytes sent again under the same id (a retry after a lost answer, a command run
    # twice) had got 409 too: they are the image stored, and nothing is stored twice.
    retried = client.post("/custom/add?image_id=my-cat", files={"data": ("renamed.jpg", photo)})
    assert retried.status_code == 200, retried.text
    assert (retried.json()["image_id"], retried.json()["duplicate"]) == ("my-cat", True)
    assert retried.json()["filename"] == services.registry.image("my-cat")["filename"] != "renamed.jpg"
    assert services.registry.image_count() == 2


def test_assign_is_never_both(client: TestClient, services: Services) -> None:
    add(client, crops(CAT, 1, seed=0)[0], "a")
    assert client.get("/custom/assign/a/positive/cat").json()["positives"] == 1
    body = client.post("/custom/assign/a/negative/cat").json()
    assert (body["positives"], body["negatives"], body["type"]) == (0, 1, "negative")
    assert services.registry.examples("cat") == ([], ["a"])


def test_train_status_predict_and_fine_tune(client: TestClient, services: Services) -> None:
    status = teach_cat(client, services)
    assert status["status"] == "finished", status
    assert status["progress"] == 1.0
    result = status["result"]
    assert result["version"] == 1
    assert result["metrics"]["positives"] == 6 and result["metrics"]["negatives"] == 8
    assert result["metrics"]["roc_auc"] >= 0.9
    assert 0.0 < result["threshold"] < 1.0

    held_out_cat = crops(CAT, 1, seed=99)[0]
    held_out_other = crops("coffee", 1, seed=99)[0]
    cat_score = client.post("/predict/custom/cat", files={"data": held_out_cat}).json()
    other_score = client.post("/predict/custom/cat", files={"data": held_out_other}).json()
    assert cat_score["tag"] == "cat" and cat_score["version"] == 1
    assert cat_score["score"] > other_score["score"]
    assert cat_score["match"] and not other_score["match"]
    # Only the tags that match, on asking: every tag's score for each image made long answers.
    assert set(client.post("/predict?match=true", files={"data": held_out_cat}).json()["custom"]) == {"cat"}
    assert client.post("/predict?match=true", files={"data": held_out_other}).json()["custom"] == {}
    assert client.post("/predict/custom?match=true", files={"data": held_out_other}).json() == {"custom": {}}
    assert set(client.get("/custom/predict/cat-0?match=true").json()["custom"]) == {"cat"}
    assert client.get(f"/custom/predict/{OTHERS[0]}-0?match=true").json()["custom"] == {}
    assert client.get(f"/custom/predict/{OTHERS[0]}-0?match=false").json()["custom"]["cat"]["match"] is False
    assert client.post("/predict?match=maybe", files={"data": held_out_cat}).json()["error"] == "invalid_parameter"

    everything = client.post("/predict", files={"data": held_out_cat}).json()
    assert "cat" in {k["name"] for k in everything["keywords"]}
    assert set(everything["custom"]) == {"cat"}
    assert set(everything["style_scores"]) >= {"black_and_white", "warm", "cool", "vivid"}

    added = client.get("/custom/predict/cat-0").json()
    assert added["image_id"] == "cat-0" and added["custom"]["cat"]["match"]
    one = client.get("/custom/predict/cat/cat-0").json()
    assert one["score"] == added["custom"]["cat"]["score"]

    add(client, crops(CAT, 1, seed=7)[0], "cat-extra")
    client.get("/custom/assign/cat-extra/positive/cat")
    second = client.post("/custom/train/cat").json()
    run_queued_jobs(services)
    retrained = client.get(f"/status/{second['task_id']}").json()["result"]
    assert retrained["version"] == 2
    assert retrained["metrics"]["fine_tuned_from"] == 1
    assert client.post("/predict/custom", files={"data": held_out_cat}).json()["custom"]["cat"]["version"] == 2


def test_second_train_request_returns_the_queued_task(client: TestClient, services: Services) -> None:
    add(client, crops(CAT, 1, seed=0)[0], "p")
    add(client, crops("coffee", 1, seed=0)[0], "n")
    client.get("/custom/assign/p/positive/t")
    client.get("/custom/assign/n/negative/t")
    first = client.get("/custom/train/t").json()
    second = client.get("/custom/train/t").json()
    assert second["task_id"] == first["task_id"] and second["already_queued"]
    assert client.get(f"/status/{first['task_id']}").json()["status"] == "queued"


def test_delete_resets_the_tag_and_keeps_images(client: TestClient, services: Services) -> None:
    assert teach_cat(client, services, positives=3, negatives_each=1)["status"] == "finished"
    assert client.get("/custom/delete/cat").json() == {"tag": "cat", "deleted": True}
    assert services.registry.examples("cat") == ([], [])
    assert client.post("/predict/custom/cat", files={"data": crops(CAT, 1, seed=5)[0]}).status_code == 404
    assert client.post("/predict/custom", files={"data": crops(CAT, 1, seed=5)[0]}).json() == {"custom": {}}
    assert list(services.store.list("models/cat/")) == []
    assert services.registry.image_exists("cat-0")
    assert client.get("/custom/delete/cat").status_code == 404


def test_state_export_delete_load_gives_the_same_scores(client: TestClient, services: Services) -> None:
    teach_cat(client, services, positives=4, negatives_each=1)
    probe = crops(CAT, 1, seed=42)[0]
    before = client.post("/predict/custom", files={"data": probe}).json()["custom"]["cat"]
    exported = client.get("/get_state")
    assert exported.headers["content-type"] == "application/x-tar"
    only_cat = client.get("/get_state?tag=cat").content
    with tarfile.open(fileobj=io.BytesIO(only_cat)) as tar:
        assert tar.getnames() == ["manifest.json", "model-00000.safetensors"]
    client.get("/custom/delete/cat")
    loaded = client.post("/set_state", files={"data": ("state.tar", exported.content)}).json()
    assert [(m["tag"], m["published"]) for m in loaded["loaded"]] == [("cat", True)]
    after = client.post("/predict/custom", files={"data": probe}).json()["custom"]["cat"]
    assert after["score"] == pytest.approx(before["score"], abs=1e-6)
    assert after["threshold"] == before["threshold"]
    assert client.get("/get_state?tag=dog").status_code == 404


def test_status_names_the_examples_cross_validation_gets_most_wrong(client: TestClient, services: Services) -> None:
    add(client, crops("coffee", 1, seed=11)[0], "mislabelled")
    client.get("/custom/assign/mislabelled/positive/cat")  # a cup of coffee marked as a cat
    result = teach_cat(client, services)["result"]
    wrong = result["metrics"]["most_wrong"]
    flagged = {w["image_id"]: w for w in wrong}
    assert "mislabelled" in flagged and flagged["mislabelled"]["type"] == "positive"
    assert flagged["mislabelled"]["score"] < 0.5
    assert not any(w["image_id"].startswith("cat-") for w in wrong)  # the real cats are fine
