"""Tags with their example counts, model versions with metrics, and rolling back."""

from __future__ import annotations

import dataclasses

import orjson
from starlette.testclient import TestClient

from shared.data.jobs import RESCORE_FUNCTION
from shared.domain.services import Services
from shared.models.archive import MAX_METRICS_BYTES, pack
from tests.support.api import add, record, run_queued_jobs, teach_cat
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
    # A name no new tag may have says why, as making it would (the page checks names this way).
    for name, says in (("\u0441at", "mixes Cyrillic and Latin"), ("x" * 65, "longer than 64 characters")):
        answer = client.get(f"/custom/tags/{name}")
        assert (answer.status_code, answer.json()["error"]) == (400, "invalid_tag") and says in answer.json()["message"]
        assert client.get(f"/custom/assign/d/positive/{name}").json()["message"] == answer.json()["message"]


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


def test_a_loaded_version_says_where_it_came_from(client: TestClient, services: Services) -> None:
    """`/set_state` stores each model as the tag's next version: version 1 of an archive can come
    back as version 3. Its metrics say so: loaded from a state archive, as version 1, trained then."""
    teach_cat(client, services, positives=2, negatives_each=1)
    retrain(client, services)
    (_, second) = client.get("/custom/versions/cat").json()["versions"]
    archive = client.get("/get_state?tag=cat").content  # version 2, the current one

    loaded = client.post("/set_state", files={"data": ("state.tar", archive)}).json()["loaded"]
    assert [(m["tag"], m["version"], m["origin"]["version"]) for m in loaded] == [("cat", 3, 2)]
    listing = client.get("/custom/versions/cat").json()
    assert [v["version"] for v in listing["versions"]] == [1, 2, 3] and listing["current"] == 3
    third = listing["versions"][2]
    origin = third["metrics"].pop("origin")
    assert origin == {"loaded_from": "state archive", "version": 2, "trained_at": second["trained_at"],
                      "loaded_at": origin["loaded_at"]} and origin["loaded_at"] >= second["trained_at"]
    assert third["trained_at"] == second["trained_at"] and third["metrics"] == second["metrics"]
    assert all("origin" not in v["metrics"] for v in listing["versions"][:2])  # trained here
    assert client.get("/custom/tags/cat").json()["model"]["metrics"]["origin"]["version"] == 2

    # Exported again and loaded: the origin names the archive it came from last, where it was 3.
    again = client.post("/set_state", files={"data": client.get("/get_state").content}).json()["loaded"]
    assert (again[0]["version"], again[0]["origin"]["version"]) == (4, 3)
    assert again[0]["origin"]["trained_at"] == second["trained_at"]


def test_an_origin_fits_beside_metrics_at_their_limit(client: TestClient, services: Services) -> None:
    """An archive's metrics may take the whole 64 KiB: the origin a load adds is not counted, so
    the version it stores still reads back (listed, predicted, exported). A malformed origin is
    refused like any other invalid archive, and archives without one (every older one) load."""
    full = {"roc_auc": 0.9, "notes": ""}
    full["notes"] = "x" * (MAX_METRICS_BYTES - len(orjson.dumps(full)))
    assert len(orjson.dumps(full)) == MAX_METRICS_BYTES
    archive = pack([dataclasses.replace(record("big"), metrics=full)], services.spec)
    loaded = client.post("/set_state", files={"data": archive}).json()["loaded"]
    assert [(m["tag"], m["version"]) for m in loaded] == [("big", 1)]
    (version,) = client.get("/custom/versions/big").json()["versions"]
    assert version["metrics"]["origin"]["version"] == 3 and len(version["metrics"]["notes"]) > 60_000
    assert "big" in client.post("/predict/custom", files={"data": crops(CAT, 1, seed=3)[0]}).json()["custom"]
    assert client.get("/get_state?tag=big").status_code == 200

    for bad in ({"loaded_from": "x" * 65}, {"version": 0}, {"version": True}, {"elsewhere": "x"}, "archive", []):
        refused = client.post("/set_state", files={"data": pack(
            [dataclasses.replace(record("bad"), metrics={"origin": bad})], services.spec)})
        assert (refused.status_code, refused.json()["error"]) == (400, "invalid_archive"), bad
    assert client.get("/custom/versions/bad").status_code == 404


def test_a_version_trained_on_few_examples_says_so(client: TestClient, services: Services) -> None:
    add(client, crops(CAT, 1, seed=60)[0], "one-cat")
    add(client, crops("coffee", 1, seed=60)[0], "one-cup")
    client.get("/custom/assign/one-cat/positive/cat")
    client.get("/custom/assign/one-cup/negative/cat")
    client.get("/custom/train/cat")
    run_queued_jobs(services)
    (version,) = client.get("/custom/versions/cat").json()["versions"]
    assert "too few to cross-validate" in version["caution"] and "1 positive example and 1 negative" in version["caution"]
    (tag,) = client.get("/custom/tags").json()["tags"]
    assert tag["model"]["caution"] == version["caution"]


def test_caution_names_what_a_version_lacks() -> None:
    from shared.domain.catalog import caution

    assert caution({"positives": 3, "negatives": 4, "folds": 3}).startswith("Trained on 3 positive examples and 4 negative")
    assert caution({"positives": 8, "negatives": 9, "folds": 5}) is None
    assert caution({"positives": 8, "negatives": 0, "presumed_negatives": 80, "folds": 5}) is None
    assert caution({"positives": 1, "negatives": 0, "presumed_negatives": 10, "folds": 0}).startswith(
        "Trained on 1 positive example against 10 unlabelled images presumed negative: too few")  # none labelled
    assert caution({"roc_auc": 0.9, "folds": 5}) is None  # a loaded archive that does not say its counts


def test_a_server_can_ask_for_more_examples(client: TestClient, services: Services) -> None:
    services.settings.min_examples = 3
    for i, data in enumerate(crops(CAT, 2, seed=61)):
        add(client, data, f"few-{i}")
        client.get(f"/custom/assign/few-{i}/positive/cat")
    add(client, crops("coffee", 1, seed=61)[0], "cup")
    client.get("/custom/assign/cup/negative/cat")
    refused = client.get("/custom/train/cat").json()
    assert refused["error"] == "not_enough_examples" and "at least 3 of each (TAGSMITH_MIN_EXAMPLES)" in refused["message"]
    for i, data in enumerate(crops(CAT, 1, seed=62)):
        add(client, data, f"more-{i}")
        client.get(f"/custom/assign/more-{i}/positive/cat")
    for i, data in enumerate(crops("rocket", 2, seed=62)):
        add(client, data, f"rocket-{i}")
        client.get(f"/custom/assign/rocket-{i}/negative/cat")
    task = client.get("/custom/train/cat").json()
    run_queued_jobs(services)
    result = client.get(f"/status/{task['task_id']}").json()["result"]
    assert "3 positive examples and 3 negative examples" in result["caution"]


def test_a_burst_of_rollbacks_queues_one_library_rescore(client: TestClient, services: Services) -> None:
    """Each rollback queued a job that rescores the whole library (1,000 rollbacks: 999 waiting
    jobs, each kept for days); the job reads the current versions when it runs, so one waiting
    job serves them all. A rollback to the version already current changes nothing."""
    teach_cat(client, services, positives=3, negatives_each=1)
    add(client, crops(CAT, 1, seed=7)[0], "cat-extra")
    client.get("/custom/assign/cat-extra/positive/cat")
    assert retrain(client, services)["version"] == 2
    run_queued_jobs(services)

    def waiting_rescores() -> int:
        return sum(job.func_name == RESCORE_FUNCTION for job in services.queue.library.get_jobs())

    assert waiting_rescores() == 0
    for i in range(40):
        assert client.post(f"/custom/rollback/cat/{1 + i % 2}").status_code == 200
    assert waiting_rescores() == 1 and client.get("/custom/versions/cat").json()["current"] == 2
    run_queued_jobs(services)
    assert client.post("/custom/rollback/cat/2").json()["previous"] == 2
    assert waiting_rescores() == 0


def test_tags_are_listed_whole_or_filtered_and_paged(client: TestClient) -> None:
    """At thousands of tags the whole list is megabytes: a client can ask for the tags whose name
    holds a text, a page at a time, and every tag is seen once."""
    add(client, crops(CAT, 1, seed=70)[0], "img")
    for tag in ("cat", "Catalog", "bobcat", "dog", "café"):
        assert client.get(f"/custom/assign/img/positive/{tag}").status_code == 200
    assert [t["tag"] for t in client.get("/custom/tags?contains=cafe%CC%81").json()["tags"]] == ["café"]  # as typed decomposed
    client.get("/custom/delete/café")
    whole = client.get("/custom/tags").json()
    assert [t["tag"] for t in whole["tags"]] == ["Catalog", "bobcat", "cat", "dog"] and whole["next"] is None
    first = client.get("/custom/tags?contains=CAT&limit=2").json()
    assert [t["tag"] for t in first["tags"]] == ["Catalog", "bobcat"] and first["next"] == "bobcat"
    assert first["tags"][1] == {"tag": "bobcat", "positives": 1, "negatives": 0, "model": None}
    rest = client.get(f"/custom/tags?contains=CAT&limit=2&after={first['next']}").json()
    assert [t["tag"] for t in rest["tags"]] == ["cat"] and rest["next"] is None
    for bad in ("limit=0", "limit=x", "limit=10001"):
        answer = client.get(f"/custom/tags?{bad}")
        assert answer.status_code == 400 and answer.json()["error"] == "invalid_parameter", bad
