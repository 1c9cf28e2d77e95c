"""Suggestions: which unlabelled stored images to label next for a trained tag."""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from starlette.testclient import TestClient

from shared.domain.services import Services
from shared.models.backbone import Features
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
    scores = {s["image_id"]: s["score"] for s in [*uncertain, *likely]}
    assert {s["image_id"] for s in likely} == {"new-cat-0", "new-cat-1"}
    assert scores["new-cat-0"] > 0.99  # the model is sure of it: nothing to ask about
    # Uncertain: exactly the candidates whose odds are within 9 times the threshold's, nearest first
    # (every candidate was listed, a near-certain cat too).
    distances = [abs(logit(s["score"]) - logit(threshold)) for s in uncertain]
    assert distances == sorted(distances) and all(d <= math.log(9) for d in distances)
    unsure = {i for i, score in all_scores(client).items() if abs(logit(score) - logit(threshold)) <= math.log(9)}
    assert {s["image_id"] for s in uncertain} == unsure and "new-cat-0" not in unsure
    assert [s["score"] for s in likely] == sorted((s["score"] for s in likely), reverse=True)
    assert all(s["match"] for s in likely)

    client.get("/custom/assign/new-cat-0/positive/cat")
    again = client.get("/custom/suggest/cat?limit=1").json()
    assert again["candidates"] == 3 and len(again["uncertain"]) == min(len(unsure - {"new-cat-0"}), 1)
    assert [s["image_id"] for s in again["likely_positive"]] == ["new-cat-1"]


def logit(p: float) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return math.log(p / (1 - p))


def all_scores(client: TestClient) -> dict[str, float]:
    """Every new image's score for the tag, as a prediction of the stored image gives it."""
    return {i: client.get(f"/custom/predict/cat/{i}").json()["score"]
            for i in ("new-cat-0", "new-cat-1", "new-coffee", "new-rocket")}


def test_unsure_first_keeps_the_scores_within_the_odds_band_nearest_first() -> None:
    from shared.domain.predictions import unsure_first

    # threshold 0.4: log-odds -0.41 ± ln 9, scores from 0.069 to 0.857
    order = unsure_first(np.array([0.99, 0.5, 0.3, 0.02, 0.6, 1.0, 0.0]), 0.4)
    assert order.tolist() == [1, 2, 4]
    assert unsure_first(np.array([0.999, 0.001]), 0.5).tolist() == []


def test_suggestions_need_a_trained_tag(client: TestClient, services: Services) -> None:
    assert client.get("/custom/suggest/cat").json()["error"] == "unknown_tag"
    teach_cat(client, services, positives=2, negatives_each=1)
    assert client.get("/custom/suggest/cat?limit=0").json()["error"] == "invalid_parameter"
    assert client.get("/custom/suggest/cat").json()["candidates"] == 0


def test_concurrent_suggestions_embed_each_new_image_once(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four suggestion requests right after an upload each needed the same new images embedded,
    in the API process: each did all of it (4 x the CPU). Now the later ones wait and read the
    first one's embeddings."""
    teach_cat(client, services, positives=2, negatives_each=1)
    for i, data in enumerate(crops(CAT, 6, seed=31)):
        add(client, data, f"fresh-{i}")
    embedded: list[int] = []
    embed_pixels = services.backbone.embed_pixels

    def counting(batch: np.ndarray) -> Features:
        embedded.append(len(batch))
        time.sleep(0.2)  # long enough for the other requests to arrive meanwhile
        return embed_pixels(batch)

    monkeypatch.setattr(services.backbone, "embed_pixels", counting)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: client.get("/custom/suggest/cat").json(), range(4)))
    assert all(a["candidates"] == 6 for a in answers)
    assert sum(embedded) == 6
