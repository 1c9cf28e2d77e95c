"""Suggestions: which unlabelled stored images to label next for a trained tag."""

from __future__ import annotations

from starlette.testclient import TestClient

from shared.domain.services import Services
from tests.support.api import add, teach_cat
from tests.support.photos import CAT, crops


def test_suggestions_rank_unlabelled_images(client: TestClient, services: Services) -> None:
    teach_cat(client, services, positives=4, negatives_each=1)
    for i, data in enumerate(crops(CAT, 2, seed=21)):
        add(client, data, f"new-cat-{i}")
    for name in ("coffee", "rocket"):
        add(client, crops(name, 1, seed=21)[0], f"new-{name}")

    body = client.get("/custom/suggest/cat?limit=10").json()
    assert (body["tag"], body["version"], body["candidates"]) == ("cat", 1, 4)
    threshold = body["threshold"]
    uncertain, likely = body["uncertain"], body["likely_positive"]
    assert {s["image_id"] for s in uncertain} == {"new-cat-0", "new-cat-1", "new-coffee", "new-rocket"}
    distances = [abs(s["score"] - threshold) for s in uncertain]
    assert distances == sorted(distances)
    assert {s["image_id"] for s in likely} == {"new-cat-0", "new-cat-1"}
    assert [s["score"] for s in likely] == sorted((s["score"] for s in likely), reverse=True)
    assert all(s["match"] for s in likely)

    client.get("/custom/assign/new-cat-0/positive/cat")
    again = client.get("/custom/suggest/cat?limit=1").json()
    assert again["candidates"] == 3 and len(again["uncertain"]) == 1
    assert [s["image_id"] for s in again["likely_positive"]] == ["new-cat-1"]


def test_suggestions_need_a_trained_tag(client: TestClient, services: Services) -> None:
    assert client.get("/custom/suggest/cat").json()["error"] == "unknown_tag"
    teach_cat(client, services, positives=2, negatives_each=1)
    assert client.get("/custom/suggest/cat?limit=0").json()["error"] == "invalid_parameter"
    assert client.get("/custom/suggest/cat").json()["candidates"] == 0
