"""Edge export: one ONNX file whose scores match the server's for the same image."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from starlette.testclient import TestClient

from shared.domain import state
from shared.domain.services import Services
from shared.models.backbone import Backbone, preprocess
from shared.models.decoding import decode_image
from shared.models.edge import edge_manifest
from tests.support.api import run_queued_jobs, teach_cat
from tests.support.photos import CAT, crops

pytestmark = pytest.mark.integration  # starts servers or processes, or loads the backbone


def test_exported_model_scores_like_the_server(client: TestClient, services: Services) -> None:
    teach_cat(client, services, positives=4, negatives_each=1)
    client.get("/custom/assign/coffee-0/positive/coffee")
    client.get("/custom/assign/cat-0/negative/coffee")
    client.get("/custom/train/coffee")
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


def test_concurrent_exports_share_one_build_and_follow_the_models(client: TestClient, services: Services,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Forty concurrent `GET /export/onnx` had built forty copies at once (1 GB more memory, and
    `GET /custom/tags` waited 4 s for a thread). Exports are built one at a time, requests for the
    same models share one build, and a new version is exported as soon as it is current."""
    teach_cat(client, services, positives=4, negatives_each=1)
    builds: list[str] = []

    def counted(build: Any) -> Any:
        def counting(*args: Any, **kwargs: Any) -> bytes:
            builds.append(build.__name__)
            time.sleep(0.5)  # long enough for every request below to arrive meanwhile
            return build(*args, **kwargs)  # type: ignore[no-any-return]
        return counting

    monkeypatch.setattr(state, "edge_model", counted(state.edge_model))
    monkeypatch.setattr(state, "state_archive", counted(state.state_archive))
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(client.get, ["/export/onnx"] * 6 + ["/get_state"] * 6))
    assert [a.status_code for a in answers] == [200] * 12
    assert len({a.content for a in answers[:6]}) == 1 and len({a.content for a in answers[6:]}) == 1
    assert sorted(builds) == ["edge_model", "state_archive"]
    assert client.get("/export/onnx").content == answers[0].content and len(builds) == 2  # kept

    client.get("/custom/train/cat")
    run_queued_jobs(services)  # version 2 is current
    assert [t["version"] for t in edge_manifest(client.get("/export/onnx").content)["tags"]] == [2]
    assert client.get("/custom/rollback/cat/1").status_code == 200
    assert [t["version"] for t in edge_manifest(client.get("/export/onnx").content)["tags"]] == [1]
    assert len(builds) == 4


def test_exports_being_sent_stay_within_their_bound() -> None:
    """Each slow download keeps its export until it ends: 160 connections asking for exports of
    distinct tag lists (18 MB each) and reading slowly had held 2 GB. Distinct exports lent out at
    once stay within the bound on answers held unsent (one alone may pass it); one lent to many
    requests counts once."""
    import asyncio

    from shared.core.errors import Unavailable
    from shared.web.exports import Exports

    async def scenario() -> None:
        exports = Exports(max_lent_bytes=25)
        first = await exports.lend("edge", ("cat",), lambda: b"a" * 20)
        assert await exports.lend("edge", ("cat",), lambda: b"never built") is first  # shared, counted once
        with pytest.raises(Unavailable):
            await exports.lend("edge", ("dog",), lambda: b"b" * 20)
        exports.give_back("edge", ("cat",))
        with pytest.raises(Unavailable):  # still sent to one request
            await exports.lend("edge", ("dog",), lambda: b"b" * 20)
        exports._kept.clear()  # (the kept export changes nothing: one being sent is found as such)
        assert await exports.lend("edge", ("cat",), lambda: b"rebuilt") is first
        exports.give_back("edge", ("cat",))
        exports.give_back("edge", ("cat",))
        assert await exports.lend("edge", ("bird",), lambda: b"c" * 40) == b"c" * 40  # alone, it may pass the bound

    asyncio.run(scenario())


def test_an_export_is_given_back_when_its_answer_ends(services: Services, backbone: Backbone) -> None:
    """With room for one export at a time, exports of other models one after another all come: each
    answer gives its export back as it ends."""
    from infra.gateway import create_gateway
    from shared.domain.services import build_services
    from shared.models.archive import pack
    from shared.models.backbone import LITE0
    from tests.support.api import record

    narrow = build_services(services.settings.model_copy(update={"max_unsent_bytes": 1}), backbone)
    with TestClient(create_gateway(services=narrow), raise_server_exceptions=False) as client:
        assert client.post("/set_state", files={"data": ("s.tar", pack([record("cat"), record("dog")], LITE0))}).status_code == 200
        for query in ("?tag=cat", "?tag=dog", "", "?tag=cat"):
            assert client.get("/get_state" + query).status_code == 200, query
        # One export for one set of tags, whatever their order (each order had been another export to hold).
        one, other = (client.get(f"/export/onnx?{query}") for query in ("tag=cat&tag=dog", "tag=dog&tag=cat"))
        assert one.status_code == other.status_code == 200 and one.content == other.content
        assert [t["tag"] for t in edge_manifest(one.content)["tags"]] == ["cat", "dog"]
