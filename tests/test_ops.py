"""Operations: readiness, request ids, Prometheus metrics and structured JSON logs."""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from pathlib import Path

import requests
from starlette.testclient import TestClient

from infra.embedded import free_port
from infra.gateway import create_gateway
from shared.core.logs import JsonFormatter
from shared.domain.services import Services, build_services
from shared.models.backbone import Backbone
from tests.support.api import add, run_queued_jobs, settings_for
from tests.support.photos import CAT, crops
from tests.support.servers import TagsmithServer


def metric(text: str, line_start: str) -> float:
    """The value of the first sample line starting with ``line_start`` (0 if none)."""
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_ready_when_both_backends_answer(client: TestClient) -> None:
    response = client.get("/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"redis": "ok", "store": "ok"}}


def test_not_ready_without_redis(backbone: Backbone, tmp_path: Path) -> None:
    nowhere = build_services(settings_for(f"redis://127.0.0.1:{free_port()}/0", tmp_path / "data"), backbone)
    with TestClient(create_gateway(services=nowhere), raise_server_exceptions=False) as client:
        response = client.get("/ready")
        assert response.status_code == 503
        body = response.json()
        assert body["error"] == "not_ready" and "Redis is unavailable" in body["message"]
        assert "127.0.0.1" not in body["message"]
        assert client.get("/health").json() == {"status": "ok"}
        assert client.get("/custom/images").status_code == 503
        assert "tagsmith_redis_up 0.0" in client.get("/metrics").text


def test_not_ready_without_the_object_store(client: TestClient, services: Services) -> None:
    shutil.rmtree(services.settings.store_dir)
    response = client.get("/ready")
    assert response.status_code == 503 and "the object store is unavailable" in response.json()["message"]
    assert str(services.settings.store_dir) not in response.text  # /ready needs no key: no paths, no addresses


def test_request_ids(client: TestClient) -> None:
    assert client.get("/health", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    generated = client.get("/health").headers["x-request-id"]
    assert len(generated) == 32 and generated != client.get("/health").headers["x-request-id"]
    for hostile in ("has spaces; and <html>", "x" * 200):
        assert len(client.get("/health", headers={"X-Request-ID": hostile}).headers["x-request-id"]) == 32
    error = client.get("/custom/images/nope", headers={"X-Request-ID": "err-1"})
    assert error.status_code == 404 and error.headers["x-request-id"] == "err-1"


def test_metrics_count_requests_by_route_template_and_trainings(client: TestClient, services: Services) -> None:
    before = client.get("/metrics").text
    route = 'tagsmith_http_requests_total{method="GET",route="/custom/images/{image_id}",status="404"}'
    for image_id in ("a", "b", "c"):
        client.get(f"/custom/images/{image_id}")
    client.get("/no/such/route")
    add(client, crops(CAT, 1, seed=0)[0], "p")
    add(client, crops("coffee", 1, seed=0)[0], "n")
    client.get("/custom/assign/p/positive/cat")
    client.get("/custom/assign/n/negative/cat")
    client.get("/custom/train/cat")
    queued = client.get("/metrics")
    assert queued.headers["content-type"].startswith("text/plain")
    text = queued.text
    assert metric(text, route) == metric(before, route) + 3
    assert 'route="<unmatched>",status="404"' in text
    assert 'tagsmith_http_request_duration_seconds_bucket{le="+Inf",method="POST",route="/custom/add"}' in text
    assert metric(text, "tagsmith_queue_depth") == 1
    assert metric(text, "tagsmith_images") == 2 and metric(text, "tagsmith_models") == 0
    run_queued_jobs(services)
    text = client.get("/metrics").text
    assert metric(text, "tagsmith_queue_depth") == 0 and metric(text, "tagsmith_models") == 1
    assert metric(text, 'tagsmith_trainings_total{outcome="finished"}') == 1
    assert metric(text, "tagsmith_training_duration_seconds_count") == 1
    assert metric(text, 'tagsmith_training_duration_seconds_bucket{le="+Inf"}') == 1


def test_json_formatter_keeps_extras_and_exceptions() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("x").makeRecord("x", logging.ERROR, "f.py", 1, "failed %s", ("job",),
                                                   exc_info=__import__("sys").exc_info(), extra={"tag": "cat"})
    line = json.loads(JsonFormatter().format(record))
    assert (line["level"], line["logger"], line["message"], line["tag"]) == ("ERROR", "x", "failed job", "cat")
    assert "ValueError: boom" in line["exception"] and line["time"].endswith("Z")


def test_server_logs_are_json_lines_with_the_request_id(live_server: TagsmithServer) -> None:
    request_id = f"log-test-{uuid.uuid4().hex[:8]}"
    response = requests.get(live_server.base + "/custom/images/nope", headers={"X-Request-ID": request_id}, timeout=30)
    assert response.status_code == 404 and response.headers["X-Request-ID"] == request_id
    deadline = time.monotonic() + 90  # the worker may still be loading the backbone
    while True:
        lines = [json.loads(line) for line in live_server.log.read_text().splitlines() if line.startswith("{")]
        ours = [line for line in lines if line.get("request_id") == request_id]
        worker = [line for line in lines if line["logger"].startswith("rq.worker")]
        if (ours and worker) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert ours, "no log line carries the request id"
    assert ours[0]["logger"] == "tagsmith.access"
    assert (ours[0]["route"], ours[0]["status"], ours[0]["method"]) == ("/custom/images/{image_id}", 404, "GET")
    assert worker, "the worker's logs are JSON lines too"


def test_an_unexpected_error_is_a_500_json_with_the_request_id(services: Services) -> None:
    from starlette.routing import Route

    from shared.web.app import create_app

    def broken(request):  # type: ignore[no-untyped-def]
        """Fails."""
        raise RuntimeError("a bug")

    with TestClient(create_app([Route("/broken", broken)], services=services), raise_server_exceptions=False) as bare:
        response = bare.get("/broken", headers={"X-Request-ID": "bug-1"})
    assert response.status_code == 500 and response.headers["x-request-id"] == "bug-1"
    assert response.json() == {"error": "internal_error", "message": "The server failed to handle this request."}
