"""Edge export: one ONNX file whose scores match the server's for the same image."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from starlette.testclient import TestClient

from shared.domain.services import Services
from shared.models.backbone import preprocess
from shared.models.decoding import decode_image
from shared.models.edge import edge_manifest
from tests.support.api import teach_cat
from tests.support.photos import CAT, crops

pytestmark = pytest.mark.integration  # starts servers or processes, or loads the backbone


def test_exported_model_scores_like_the_server(client: TestClient, services: Services) -> None:
    teach_cat(client, services, positives=4, negatives_each=1)
    client.get("/custom/assign/coffee-0/positive/coffee")
    client.get("/custom/assign/cat-0/negative/coffee")
    client.get("/custom/train/coffee")
    from tests.support.api import run_queued_jobs

    run_queued_jobs(services)
    response = client.get("/export/onnx")
    assert response.status_code == 200 and response.headers["content-type"] == "application/octet-stream"
    manifest = edge_manifest(response.content)
    assert [t["tag"] for t in manifest["tags"]] == ["cat", "coffee"]

    session = ort.InferenceSession(response.content, providers=["CPUExecutionProvider"])
    probes = crops(CAT, 2, seed=77) + crops("coffee", 1, seed=77)
    batch = np.stack([preprocess(decode_image(p, 50_000_000).image) for p in probes])
    (scores,) = session.run(["scores"], {"images": batch})
    for probe, row in zip(probes, scores, strict=True):
        served = client.post("/predict/custom", files={"data": probe}).json()["custom"]
        for i, tag in enumerate(["cat", "coffee"]):
            assert abs(row[i] - served[tag]["score"]) <= 1e-4

    only = edge_manifest(client.get("/export/onnx?tag=coffee").content)
    assert [t["tag"] for t in only["tags"]] == ["coffee"]
    repeated = edge_manifest(client.get("/export/onnx?" + "&".join(["tag=coffee"] * 50)).content)
    assert [t["tag"] for t in repeated["tags"]] == ["coffee"]
    assert client.get("/export/onnx?tag=dog").json()["error"] == "unknown_tag"
