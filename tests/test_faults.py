"""Faults: Redis going away and coming back, and ``tagsmith serve`` killed with SIGKILL."""

from __future__ import annotations

import re
import signal
import socket
from pathlib import Path

import psutil
import pytest
import requests
from starlette.routing import Route

from infra.embedded import free_port
from shared.web.auth import is_public
from tests.support.photos import CAT, OTHERS, crops
from tests.support.servers import RedisServer, TagsmithServer

pytestmark = pytest.mark.integration  # starts servers or processes, or loads the backbone

PARAMS = {"image_id": "img1", "tag": "cat", "type": "positive", "task_id": "abc", "version": "1"}
NO_REDIS = {"/openapi.json", "/docs", "/metrics"}


def redis_backed_routes() -> list[tuple[str, str]]:
    from infra.gateway import app

    out = []
    for route in app.routes:
        if isinstance(route, Route) and route.methods and not is_public(route.path) and route.path not in NO_REDIS:
            path = re.sub(r"{(\w+)(:\w+)?}", lambda m: PARAMS[m.group(1)], route.path)
            out += [(method, path) for method in sorted(route.methods - {"HEAD"})]
    return out


def test_redis_outage_is_503_everywhere_and_heals_itself(tmp_path: Path) -> None:
    redis_server = RedisServer(tmp_path / "redis", persistent=True)
    server = TagsmithServer(tmp_path / "data", free_port(), {"TAGSMITH_REDIS_URL": redis_server.url,
                                                             "TAGSMITH_API_KEYS": ""})
    server.start()
    base, photo = server.base, crops(CAT, 1, seed=0)[0]
    try:
        assert requests.post(base + "/custom/add?image_id=img1", files={"data": ("a.jpg", photo)}).status_code == 201
        assert requests.get(base + "/custom/assign/img1/positive/cat").ok
        redis_server.stop()
        routes, wrong = redis_backed_routes(), []
        for method, path in routes:
            upload = _one_model_archive() if path == "/set_state" else photo  # valid, so Redis is reached
            files = {"data": ("a", upload)} if method == "POST" else None
            response = requests.request(method, base + path, files=files, timeout=60)
            if response.status_code != 503 or response.json()["error"] != "backend_unavailable":
                wrong.append((method, path, response.status_code, response.text[:150]))
        ready = requests.get(base + "/ready")
        health = requests.get(base + "/health")
        print(f"\nredis down: {len(routes) - len(wrong)} of {len(routes)} Redis-backed route-methods answered "
              f"503 backend_unavailable; /ready {ready.status_code}, /health {health.status_code}")
        assert wrong == []
        assert ready.status_code == 503 and ready.json()["error"] == "not_ready"
        assert health.status_code == 200

        redis_server.start()  # same port, same data; the server is not restarted
        assert requests.get(base + "/ready").status_code == 200
        assert requests.get(base + "/custom/tags/cat").json()["positives"] == ["img1"]
        assert requests.post(base + "/custom/add?image_id=img2", files={"data": ("a.jpg", photo)}).status_code == 201
        print("redis back: ready again, data intact, writes accepted, without restarting tagsmith")
    finally:
        server.stop()
        redis_server.stop()


def kill_everything(server: TagsmithServer) -> int:
    """SIGKILL ``serve`` and all its children (Redis, worker) at once, as a container kill would."""
    assert server.process is not None
    parent = psutil.Process(server.process.pid)
    processes = [parent, *parent.children(recursive=True)]
    for process in processes:
        process.send_signal(signal.SIGKILL)
    psutil.wait_procs(processes, timeout=30)
    server.process.wait(10)
    return len(processes)


def test_sigkill_loses_no_acknowledged_write_and_shows_no_half_upload(tmp_path: Path) -> None:
    server = TagsmithServer(tmp_path / "data", free_port())
    server.start()
    base = server.base
    photos = crops(CAT, 6, seed=7) + [crops(name, 1, seed=8)[0] for name in OTHERS]
    with requests.Session() as http:
        for i, data in enumerate(photos):  # the burst: every write acknowledged, then the kill
            assert http.post(f"{base}/custom/add?image_id=burst-{i}", files={"data": ("a.jpg", data)}).status_code == 201
            kind = "positive" if i < 6 else "negative"
            assert http.get(f"{base}/custom/assign/burst-{i}/{kind}/burst").ok
        archive = http.get(f"{base}/get_state").content
        state = requests.post(f"{base}/set_state", files={"data": ("s.tar", _one_model_archive())})
        assert state.status_code == 200, state.text
        before = {"tags": http.get(f"{base}/custom/tags").json(), "images": http.get(f"{base}/custom/images").json()}
        # Half an upload is on the wire when the kill comes.
        half = socket.create_connection(("127.0.0.1", server.port))
        body = (b'--b\r\nContent-Disposition: form-data; name="data"; filename="h.jpg"\r\n\r\n' + photos[0])
        half.sendall(b"POST /custom/add?image_id=half HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\n"
                     + f"Content-Length: {len(body) + 8}\r\n\r\n".encode() + body[: len(body) // 2])
        killed = kill_everything(server)
        half.close()
    assert archive  # the export worked before the kill

    server.start()
    after = {"tags": requests.get(f"{base}/custom/tags").json(), "images": requests.get(f"{base}/custom/images").json()}
    half_visible = requests.get(f"{base}/custom/images/half").status_code != 404
    originals = sum(requests.get(f"{base}/custom/images/burst-{i}/original").content == photos[i]
                    for i in range(len(photos)))
    leftovers = [p.name for p in (server.data_dir / "objects").rglob("*") if p.name.startswith(".tmp-")
                 or "half" in p.name]
    print(f"\nSIGKILL of serve and its {killed - 1} children after {len(photos)} acknowledged adds and assignments "
          f"and a model: {originals}/{len(photos)} images intact, tags equal: {after['tags'] == before['tags']}, "
          f"half upload visible: {half_visible}, temp files left: {len(leftovers)}")
    try:
        assert after == before
        assert originals == len(photos)
        assert not half_visible and leftovers == []
        assert "model-test" in {t["tag"] for t in after["tags"]["tags"]}
        # And the half-sent id is free to use.
        assert requests.post(f"{base}/custom/add?image_id=half", files={"data": ("h.jpg", photos[0])}).status_code == 201
    finally:
        server.stop()


def _one_model_archive() -> bytes:
    import numpy as np

    from shared.models.archive import ModelRecord, pack
    from shared.models.backbone import LITE0
    from shared.models.heads import Head

    weight = np.linspace(-1, 1, LITE0.embedding_size + LITE0.style_size, dtype=np.float32)
    record = ModelRecord(tag="model-test", version=1, threshold=0.5, trained_at="2026-01-01T00:00:00Z",
                         head=Head(weight, 0.0), metrics={})
    return pack([record], LITE0)


def test_s3_outage_is_503_and_heals_itself(tmp_path: Path, redis_server, backbone) -> None:  # type: ignore[no-untyped-def]
    """The S3 server dies: uploads and reads answer JSON 503; it comes back: tagsmith works again,
    without a restart, and what was stored before is still there."""
    from starlette.testclient import TestClient

    from infra.gateway import create_gateway
    from shared.domain.services import build_services
    from tests.support.api import settings_for
    from tests.support.servers import S3Server

    s3 = S3Server(tmp_path / "s3")
    settings = settings_for(redis_server.url, tmp_path / "data", **s3.overrides("tagsmith-fault"))
    app = create_gateway(services=build_services(settings, backbone))

    first, second = crops(CAT, 2, seed=5)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            assert client.post("/custom/add?image_id=before", files={"data": first}).status_code == 201
            s3.stop()
            down = client.post("/custom/add?image_id=during", files={"data": second})
            assert down.status_code == 503 and down.json()["error"] == "backend_unavailable"
            assert client.get("/custom/predict/before").status_code == 503
            assert client.get("/ready").status_code == 503
            assert client.get("/custom/images/during").status_code != 200  # nothing half-registered
            s3 = S3Server(tmp_path / "s3", ports=s3.ports)  # same ports, same data
            assert client.get("/ready").status_code == 200
            assert client.post("/custom/add?image_id=during", files={"data": second}).status_code == 201
            assert client.get("/custom/images/before/original").content == first
    finally:
        s3.stop()
