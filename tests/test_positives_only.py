"""Teaching a tag from positives only: other stored images, unlabelled for the tag, stand in as
presumed negatives (``shared/domain/training.py``), weighted below real negatives
(``shared/models/heads.py``)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from infra.gateway import create_gateway
from shared.domain import catalog, training
from shared.domain.services import Services, build_services
from shared.models.backbone import Backbone
from tests.support.api import add, run_queued_jobs, settings_for
from tests.support.photos import CAT, OTHERS, crops


def teach_positives(client: TestClient, tag: str, images: list[tuple[str, bytes]]) -> None:
    for image_id, data in images:
        add(client, data, image_id)
        assert client.get(f"/custom/assign/{image_id}/positive/{tag}").status_code == 200


def train(client: TestClient, services: Services, tag: str) -> dict[str, Any]:
    response = client.get(f"/custom/train/{tag}")
    assert response.status_code == 202, response.text
    run_queued_jobs(services)
    status: dict[str, Any] = client.get(f"/status/{response.json()['task_id']}").json()
    return status


def cat_score(client: TestClient, data: bytes) -> float:
    response = client.post("/predict/custom/cat", files={"data": ("x.jpg", data, "image/jpeg")})
    assert response.status_code == 200, response.text
    score: float = response.json()["score"]
    return score


def test_a_tag_with_positives_only_trains_against_other_stored_images(client: TestClient, services: Services) -> None:
    teach_positives(client, "cat", [(f"cat-{i}", data) for i, data in enumerate(crops(CAT, 5, seed=1))])
    for name in OTHERS:  # stored, unlabelled for the tag
        for i, data in enumerate(crops(name, 2, seed=2)):
            add(client, data, f"{name}-{i}")

    status = train(client, services, "cat")
    assert status["status"] == "finished", status.get("error")
    result = status["result"]
    assert result["published"] and result["version"] == 1
    metrics = result["metrics"]
    assert (metrics["positives"], metrics["negatives"], metrics["presumed_negatives"]) == (5, 0, 8)
    assert 0 < metrics["presumed_negative_weight"] < 1
    assert "unlabelled" in metrics["note"] and "precision" in metrics["note"].lower()
    assert all(w["type"] in ("positive", "presumed_negative") for w in metrics["most_wrong"])
    versions = client.get("/custom/versions/cat").json()["versions"]
    assert versions[0]["metrics"]["presumed_negatives"] == 8
    assert services.registry.examples("cat") == ([f"cat-{i}" for i in range(5)], [])  # nothing was labelled

    held_out_cat = crops(CAT, 1, seed=9)[0]
    for name in ("coffee", "rocket"):  # other kinds, never stored
        assert cat_score(client, held_out_cat) > cat_score(client, crops(name, 1, seed=9)[0]), name
    assert client.get("/custom/predict/cat/coffee-0").json()["score"] < 0.5  # a presumed negative


def test_positives_only_and_no_other_stored_image_is_400(client: TestClient, services: Services) -> None:
    positives = crops(CAT, 3, seed=3)
    teach_positives(client, "cat", [(f"cat-{i}", data) for i, data in enumerate(positives)])
    add(client, positives[0], "copy-of-cat-0")  # the same content as a positive: not another image
    response = client.get("/custom/train/cat")
    assert response.status_code == 400
    assert response.json() == {
        "error": "not_enough_examples",
        "message": "Tag 'cat' has 3 positive examples and no negatives, and there are no other stored images to "
                   "use as presumed negatives: add a few images that are not 'cat' (as negatives, or just stored).",
    }
    assert services.queue.queue.count == 0


def test_the_worker_refuses_too_if_the_other_images_went_meanwhile(client: TestClient, services: Services) -> None:
    teach_positives(client, "cat", [(f"cat-{i}", data) for i, data in enumerate(crops(CAT, 2, seed=4))])
    add(client, crops("coffee", 1, seed=4)[0], "cup")
    response = client.get("/custom/train/cat")
    assert response.status_code == 202, response.text
    assert client.delete("/custom/images/cup").status_code == 200  # the library shrank before the worker ran
    run_queued_jobs(services)
    status = client.get(f"/status/{response.json()['task_id']}").json()
    assert status["status"] == "failed"
    assert "Tag 'cat' has 2 positive examples and no negatives, and there are no other stored images" in status["error"]
    assert services.registry.model("cat") is None


def test_with_real_negatives_no_image_is_presumed(client: TestClient, services: Services) -> None:
    teach_positives(client, "cat", [(f"cat-{i}", data) for i, data in enumerate(crops(CAT, 3, seed=5))])
    add(client, crops("coffee", 1, seed=5)[0], "cup")
    client.get("/custom/assign/cup/negative/cat")
    add(client, crops("rocket", 1, seed=5)[0], "unlabelled")
    metrics = train(client, services, "cat")["result"]["metrics"]
    assert (metrics["positives"], metrics["negatives"]) == (3, 1)
    assert "presumed_negatives" not in metrics and "note" not in metrics


def test_the_same_contents_under_other_ids_train_the_same_head(
    client: TestClient, services: Services, redis_server: Any, tmp_path: Path, backbone: Backbone,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Presumed negatives are chosen by content and the examples ordered by content: the same
    positives and library, added in another order under other ids, give the same version."""
    monkeypatch.setattr(training, "PRESUMED_NEGATIVES", 4)  # 4 of the 8 other images: the choice matters
    positives = crops(CAT, 4, seed=6)
    library = [data for name in OTHERS for data in crops(name, 2, seed=7)]

    teach_positives(client, "cat", [(f"a-cat-{i}", data) for i, data in enumerate(positives)])
    for i, data in enumerate(library):
        add(client, data, f"a-other-{i}")
    first = train(client, services, "cat")

    other = build_services(settings_for(redis_server.url, tmp_path / "other"), backbone)
    shuffled = random.Random(0)
    with TestClient(create_gateway(services=other), raise_server_exceptions=False) as second_client:
        order = list(enumerate(library))
        shuffled.shuffle(order)
        for i, data in order:
            add(second_client, data, f"z{9 - i}-unlabelled")
        teach_positives(second_client, "cat", [(f"p{3 - i}", data) for i, data in reversed(list(enumerate(positives)))])
        second = train(second_client, other, "cat")

    assert first["status"] == second["status"] == "finished"
    a, b = first["result"], second["result"]
    assert a["metrics"]["presumed_negatives"] == b["metrics"]["presumed_negatives"] == 4
    assert a["threshold"] == b["threshold"] and a["form"] == b["form"]
    for key in ("roc_auc", "f1", "l2", "log_loss_by_form"):
        assert a["metrics"][key] == b["metrics"][key], key
    head_a = catalog.load_version(services, "cat", services.registry.model("cat").key).head  # type: ignore[union-attr]
    head_b = catalog.load_version(other, "cat", other.registry.model("cat").key).head  # type: ignore[union-attr]
    assert np.array_equal(head_a.weight, head_b.weight) and head_a.bias == head_b.bias


def test_the_choice_of_presumed_negatives_follows_contents_not_positions() -> None:
    contents = [f"{i:064x}" for i in range(30)]
    chosen = [contents[i] for i in training.choose_presumed_negatives(contents, "cat", {contents[0]}, 10)]
    assert len(chosen) == 10 and contents[0] not in chosen
    shuffled = contents[::-1] + contents[:5]  # another order, with repeats
    again = [shuffled[i] for i in training.choose_presumed_negatives(shuffled, "cat", {contents[0]}, 10)]
    assert again == chosen
    other_tag = [contents[i] for i in training.choose_presumed_negatives(contents, "dog", {contents[0]}, 10)]
    assert other_tag != chosen  # each tag ranks the library its own way
    assert training.choose_presumed_negatives(contents[:3], "cat", set(contents[:3]), 10) == []
