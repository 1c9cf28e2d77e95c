"""Tags with their example counts, model versions with metrics, and rolling back."""

from __future__ import annotations

from starlette.testclient import TestClient

from shared.domain.services import Services
from tests.support.api import add, run_queued_jobs, teach_cat
from tests.support.photos import CAT, crops


def retrain(client: TestClient, services: Services) -> dict:  # type: ignore[type-arg]
    task = client.post("/custom/train/cat").json()
    run_queued_jobs(services)
    return client.get(f"/status/{task['task_id']}").json()["result"]


def test_tags_list_counts_and_current_models(client: TestClient, services: Services) -> None:
    teach_cat(client, services, positives=3, negatives_each=1)
    add(client, crops(CAT, 1, seed=5)[0], "d")
    client.get("/custom/assign/d/positive/dog")
    tags = {t["tag"]: t for t in client.get("/custom/tags").json()["tags"]}
    assert (tags["cat"]["positives"], tags["cat"]["negatives"]) == (3, 4)
    assert tags["cat"]["model"]["version"] == 1 and tags["cat"]["model"]["metrics"]["roc_auc"] >= 0.9
    assert tags["dog"] == {"tag": "dog", "positives": 1, "negatives": 0, "model": None}
    info = client.get("/custom/tags/dog").json()
    assert (info["positives"], info["negatives"], info["model"]) == (["d"], [], None)
    assert client.get("/custom/tags/bird").json()["error"] == "unknown_tag"


def test_versions_and_rollback(client: TestClient, services: Services) -> None:
    teach_cat(client, services, positives=3, negatives_each=1)
    add(client, crops(CAT, 1, seed=7)[0], "cat-extra")
    client.get("/custom/assign/cat-extra/positive/cat")
    assert retrain(client, services)["version"] == 2

    listing = client.get("/custom/versions/cat").json()
    assert listing["current"] == 2
    assert [(v["version"], v["current"]) for v in listing["versions"]] == [(1, False), (2, True)]
    first, second = listing["versions"]
    assert (first["metrics"]["positives"], second["metrics"]["positives"]) == (3, 4)
    assert first["trained_at"] and 0 < first["threshold"] < 1

    probe = crops(CAT, 1, seed=42)[0]
    assert client.post("/predict/custom/cat", files={"data": probe}).json()["version"] == 2
    assert client.post("/custom/rollback/cat/1").json() == {
        "tag": "cat", "version": 1, "previous": 2, "threshold": first["threshold"]}
    assert client.post("/predict/custom/cat", files={"data": probe}).json()["version"] == 1
    assert client.get("/custom/versions/cat").json()["current"] == 1

    third = retrain(client, services)
    assert (third["version"], third["metrics"]["fine_tuned_from"]) == (3, 1)
    assert client.get("/custom/rollback/cat/2").json()["version"] == 2  # the seed's GET style works too


def test_rollback_refusals(client: TestClient, services: Services) -> None:
    teach_cat(client, services, positives=2, negatives_each=1)
    assert client.get("/custom/rollback/cat/9").json()["error"] == "unknown_version"
    assert client.get("/custom/rollback/cat/x").json()["error"] == "invalid_version"
    assert client.get("/custom/rollback/cat/0").status_code == 400
    assert client.get("/custom/rollback/dog/1").status_code == 404
    assert client.get("/custom/versions/dog").json()["error"] == "unknown_tag"
    client.get("/custom/delete/cat")
    assert client.get("/custom/rollback/cat/1").status_code == 404  # deleting removes the versions
