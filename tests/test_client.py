"""The Python client against the real API (in process, on a real Redis), seed calls first."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

import tagsmith_client.client as client_module
from infra.embedded import free_port
from shared.domain.services import Services
from shared.models.edge import edge_manifest
from tagsmith_client import Client, TagsmithError, TaskFailed
from tests.support.api import run_queued_jobs, teach_cat
from tests.support.photos import CAT, OTHERS, crops
from tests.support.servers import ROOT, TagsmithServer


@pytest.fixture
def tagsmith(client: TestClient) -> Iterator[Client]:
    with Client(http=client) as api:
        yield api


def test_the_seed_flow(tagsmith: Client, services: Services, tmp_path: Path) -> None:
    first = tmp_path / "cat-0.jpg"
    first.write_bytes(crops(CAT, 1, seed=1)[0])
    generated = tagsmith.add_image(first)["image_id"]
    assert tagsmith.assign_image("positive", "cat", generated)["positives"] == 1
    for i, data in enumerate(crops(CAT, 3, seed=2)):
        assert tagsmith.add_image(data, image_id=f"cat-{i + 1}")["image_id"] == f"cat-{i + 1}"
        tagsmith.assign_image("positive", "cat", f"cat-{i + 1}")
    for name in OTHERS:
        with (tmp_path / "other.jpg").open("wb+") as f:
            f.write(crops(name, 1, seed=3)[0])
            f.seek(0)
            image_id = tagsmith.add_image(f, image_id=name)["image_id"]
        assert tagsmith.assign_image("negative", "cat", image_id)["negatives"] >= 1

    task = tagsmith.train("cat")
    assert task["status"] == "queued" and tagsmith.status(task["task_id"])["status"] == "queued"
    run_queued_jobs(services)
    seen: list[str] = []
    final = tagsmith.wait(task["task_id"], on_progress=lambda s: seen.append(s["status"]))
    assert seen == ["finished"] and final["result"]["version"] == 1

    probe = crops(CAT, 1, seed=99)[0]
    assert tagsmith.predict(probe)["custom"]["cat"]["match"]
    assert tagsmith.predict_custom(probe)["custom"]["cat"]["version"] == 1
    assert tagsmith.predict_custom(probe, "cat")["tag"] == "cat"
    assert tagsmith.predict_added("cat-1")["custom"]["cat"]["match"]
    assert not tagsmith.predict_added("coffee", "cat")["match"]
    assert tagsmith.predict_added("coffee", matches_only=True)["custom"] == {}
    assert set(tagsmith.predict_custom(probe, matches_only=True)["custom"]) == {"cat"}
    assert set(tagsmith.predict(probe, matches_only=True)["custom"]) == {"cat"}
    cup = crops("coffee", 1, seed=41)[0]
    assert tagsmith.predict_custom(cup, matches_only=True)["custom"] == {}
    assert tagsmith.predict(cup, matches_only=True)["custom"] == {}
    assert set(tagsmith.predict(cup)["custom"]) == {"cat"}

    archive = tagsmith.get_state()
    assert tagsmith.delete("cat") == {"tag": "cat", "deleted": True}
    assert tagsmith.predict_custom(probe) == {"custom": {}}
    assert [m["tag"] for m in tagsmith.set_state(archive)["loaded"]] == ["cat"]
    assert tagsmith.predict_custom(probe, "cat")["match"]


def test_calls_beyond_the_seed(tagsmith: Client, services: Services) -> None:
    batch = tagsmith.add_images(crops(CAT, 2, seed=4), image_ids=["p1", "p2"], tag="cat", sample_type="positive")
    assert batch["added"] == 2 and [i["image_id"] for i in batch["images"]] == ["p1", "p2"]
    tagsmith.add_images(crops("coffee", 2, seed=4), image_ids=["n1", "n2"], tag="cat", sample_type="negative")
    assert tagsmith.images()["total"] == 4
    assert tagsmith.image("p1")["tags"] == {"cat": "positive"}
    assert tagsmith.thumbnail("p1", size=32)[:2] == b"\xff\xd8"
    assert tagsmith.tags()[0] | {"model": None} == {"tag": "cat", "positives": 2, "negatives": 2, "model": None}
    assert [t["tag"] for t in tagsmith.tags(contains="CA")] == ["cat"] and tagsmith.tags(contains="dog") == []
    for tag in ("scarab", "Scat", "dog"):
        tagsmith.assign_image("positive", tag, "p1")
    tagsmith.tags_page = 1  # a page a tag: the pages are walked, the server filters them
    asked: list[dict[str, Any]] = []
    real_json = tagsmith._json

    def counted(method: str, path: str, **kwargs: Any) -> Any:
        asked.append(kwargs.get("params") or {})
        return real_json(method, path, **kwargs)

    tagsmith._json = counted  # type: ignore[method-assign]
    assert [t["tag"] for t in tagsmith.tags()] == ["Scat", "cat", "dog", "scarab"]
    assert [t["tag"] for t in tagsmith.tags(contains="CA")] == ["Scat", "cat", "scarab"]
    assert [(a["contains"], a["limit"]) for a in asked] == [("", 1)] * 4 + [("CA", 1)] * 3
    tagsmith._json = real_json  # type: ignore[method-assign]
    for tag in ("scarab", "Scat", "dog"):
        tagsmith.unassign_image("p1", tag)
    tagsmith.train("cat")
    run_queued_jobs(services)
    tagsmith.add_image(crops(CAT, 1, seed=5)[0], image_id="unlabelled")
    assert tagsmith.suggest("cat", limit=5)["likely_positive"][0]["image_id"] == "unlabelled"
    assert tagsmith.versions("cat")["current"] == 1
    tagsmith.train("cat")
    run_queued_jobs(services)
    assert tagsmith.rollback("cat", 1)["previous"] == 2
    assert tagsmith.unassign_image("p2", "cat")["removed"] == "positive"
    assert tagsmith.tag("cat")["positives"] == ["p1"]
    assert tagsmith.delete_image("p1")["removed_from"] == ["cat"]
    assert tagsmith.health() == {"status": "ok"} and tagsmith.ready()["status"] == "ready"


def test_errors_carry_the_servers_status_code_and_message(tagsmith: Client) -> None:
    with pytest.raises(TagsmithError) as unknown:
        tagsmith.predict_added("nope")
    assert (unknown.value.status, unknown.value.code) == (404, "unknown_image")
    assert unknown.value.message == "No image with id 'nope'."
    first, other = crops(CAT, 2, seed=0)
    tagsmith.add_image(first, image_id="taken")
    assert tagsmith.add_image(first, image_id="taken")["duplicate"]  # sent again: the image stored
    with pytest.raises(TagsmithError) as taken:
        tagsmith.add_image(other, image_id="taken")
    assert (taken.value.status, taken.value.code) == (409, "image_exists")
    with pytest.raises(TagsmithError) as wrong:
        tagsmith.assign_image("maybe", "cat", "taken")
    assert (wrong.value.status, wrong.value.code) == (400, "invalid_type")
    with pytest.raises(TagsmithError) as text:
        tagsmith.predict(b"just text")
    assert (text.value.status, text.value.code) == (415, "not_an_image")
    with pytest.raises(TagsmithError) as tag:
        tagsmith.train("a/b")  # encoded, so the server sees the slash and refuses the name
    assert tag.value.status in (400, 404)


def test_wait_raises_when_the_task_fails_or_takes_too_long(tagsmith: Client, services: Services) -> None:
    tagsmith.add_images(crops(CAT, 1, seed=0), image_ids=["p"], tag="cat", sample_type="positive")
    tagsmith.add_images(crops("coffee", 1, seed=0), image_ids=["n"], tag="cat", sample_type="negative")
    task = tagsmith.train("cat")
    with pytest.raises(TimeoutError):
        tagsmith.wait(task["task_id"], timeout=0, poll=0)
    tagsmith.unassign_image("p", "cat")  # the worker will find no positive example
    run_queued_jobs(services)
    with pytest.raises(TaskFailed) as failed:
        tagsmith.wait(task["task_id"])
    assert "at least one of each" in failed.value.message and failed.value.task["status"] == "failed"


def test_an_unreachable_server_is_an_error_too() -> None:
    with Client(f"http://127.0.0.1:{free_port()}", timeout=5) as nobody, pytest.raises(TagsmithError) as error:
        nobody.health()
    assert (error.value.status, error.value.code) == (0, "unreachable")


def test_the_client_installs_alone_with_only_httpx(tmp_path: Path, live_server: TagsmithServer) -> None:
    """``pip install ./client`` in a fresh environment: httpx and its own few, nothing of the server."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "--quiet", str(ROOT / "client")], check=True, timeout=600)
    listed = subprocess.run([python, "-m", "pip", "list", "--format=json"], check=True, capture_output=True).stdout
    installed = {package["name"].lower() for package in json.loads(listed)}
    assert {"tagsmith-client", "httpx"} <= installed
    assert not installed & {"tagsmith", "torch", "numpy", "pillow", "starlette", "redis"}, installed
    code = (
        "import sys; from tagsmith_client import Client; "
        f"print(Client({live_server.base!r}).health()['status']); "
        "assert not {'torch', 'numpy', 'shared'} & set(sys.modules)"
    )
    ran = subprocess.run([python, "-c", code], cwd=tmp_path, check=True, capture_output=True, text=True)
    assert ran.stdout.strip() == "ok"


class FakeClock:
    """``time.monotonic`` and ``time.sleep`` of the client module: sleeping moves the clock."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1000.0
        self.slept: list[float] = []
        monkeypatch.setattr(client_module.time, "monotonic", lambda: self.now)
        monkeypatch.setattr(client_module.time, "sleep", self.sleep)

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def scripted(answers: list[httpx.Response | Exception]) -> tuple[Client, list[str]]:
    """A client whose server answers /status with ``answers`` in turn (an exception is raised as
    the transport's), then 'finished'."""
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        if answers:
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer
        return httpx.Response(200, json={"task_id": "t", "status": "finished", "progress": 1.0, "stage": "done"})

    http = httpx.Client(transport=httpx.MockTransport(handler), base_url="http://tagsmith.test")
    return Client(http=http), asked


def unavailable() -> httpx.Response:
    return httpx.Response(503, json={"error": "backend_unavailable", "message": "Redis is down."})


def test_wait_retries_transient_refusals_with_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 503 (Redis restarting, a function service replaced) or a refused connection while a task
    runs is polled again after 0.25 s, 0.5 s, 1 s, ... at most 5 s; the task's end still comes back."""
    clock = FakeClock(monkeypatch)
    connection_refused = httpx.ConnectError("connection refused")
    tagsmith, asked = scripted([unavailable()] * 3 + [connection_refused] + [unavailable()] * 3)
    assert tagsmith.wait("t", timeout=60)["status"] == "finished"
    assert len(asked) == 8
    assert clock.slept == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_wait_gives_up_on_transient_refusals_at_its_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(monkeypatch)
    tagsmith, asked = scripted([unavailable()] * 100)
    with pytest.raises(TagsmithError) as error:
        tagsmith.wait("t", timeout=10)
    assert (error.value.status, error.value.code) == (503, "backend_unavailable")
    assert sum(clock.slept) == pytest.approx(10) and clock.slept[-1] < 5  # the last pause ends at the deadline
    clock.slept.clear()
    tagsmith, asked = scripted([unavailable()] * 100)  # no timeout: refusals for retry_for seconds
    with pytest.raises(TagsmithError):
        tagsmith.wait("t", retry_for=20)
    assert sum(clock.slept) == pytest.approx(20)


def test_wait_raises_other_refusals_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(monkeypatch)
    tagsmith, asked = scripted([httpx.Response(404, json={"error": "unknown_task", "message": "No task 't'."})])
    with pytest.raises(TagsmithError) as error:
        tagsmith.wait("t", timeout=60)
    assert (error.value.status, error.value.code, len(asked), clock.slept) == (404, "unknown_task", 1, [])


def test_export_onnx_streams_the_device_model_to_a_file(tagsmith: Client, client: TestClient,
                                                        services: Services, tmp_path: Path) -> None:
    teach_cat(client, services, positives=2, negatives_each=1)
    out = tmp_path / "out"
    out.mkdir()
    target = out / "edge.onnx"
    size = tagsmith.export_onnx(target, ["cat"])
    assert size == target.stat().st_size > 1_000_000
    assert [t["tag"] for t in edge_manifest(target.read_bytes())["tags"]] == ["cat"]
    assert tagsmith.export_onnx(out / "all.onnx") == size  # every tag: here the one
    with pytest.raises(TagsmithError) as unknown:
        tagsmith.export_onnx(out / "dog.onnx", ["dog"])
    assert (unknown.value.status, unknown.value.code) == (404, "unknown_tag")
    assert sorted(p.name for p in out.iterdir()) == ["all.onnx", "edge.onnx"]  # no partial file left


def test_downloads_write_no_file_but_their_own(tagsmith: Client, client: TestClient, services: Services,
                                               tmp_path: Path) -> None:
    """A link where the temporary file used to go (`backup.tar.partial` pointing elsewhere) had the
    download written through it; a refused score export emptied the file it was to replace."""
    teach_cat(client, services, positives=2, negatives_each=1)
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    (tmp_path / "backup.tar.partial").symlink_to(victim)
    assert tagsmith.backup(tmp_path / "backup.tar") > 0
    assert victim.read_text() == "mine" and not (tmp_path / "backup.tar").is_symlink()

    scores = tmp_path / "scores.csv"
    written = tagsmith.save_scores(scores)
    assert written == scores.stat().st_size and scores.read_text().startswith('"image_id"')
    with pytest.raises(TagsmithError) as refused:
        tagsmith.save_scores(scores, tags=["no such tag"])
    assert refused.value.code == "unknown_tag" and scores.stat().st_size == written
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == ["backup.tar.partial"]  # the link
    scores.chmod(0o640)  # a file replaced keeps its permissions
    tagsmith.save_scores(scores)
    assert scores.stat().st_mode & 0o777 == 0o640
    fifo = tmp_path / "scores.fifo"  # a pipe (as `-o >(gzip > s.gz)`) is written into, not replaced
    os.mkfifo(fifo)
    with ThreadPoolExecutor(1) as pool:
        reading = pool.submit(fifo.read_bytes)
        assert tagsmith.save_scores(fifo) == len(reading.result(timeout=60))
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert tagsmith.save_scores("/dev/null") == written  # a device: written into, never replaced (as root too)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode) and not list(Path("/dev").glob(".null.*"))
    with pytest.raises(FileNotFoundError, match="missing/scores.csv"):  # names the file, not a temporary one
        tagsmith.save_scores(tmp_path / "missing" / "scores.csv")


def test_a_body_that_trickles_in_ends_the_call_at_its_timeout() -> None:
    """httpx's timeout bounds each read: a server sending a byte every 0.4 s kept a call with a
    1 s timeout waiting for as long as it liked."""
    import socket
    import threading
    import time

    from tagsmith_client import Client, TagsmithError

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def trickle() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
        with contextlib.suppress(OSError):
            for _ in range(100):
                conn.sendall(b" ")
                time.sleep(0.4)
        conn.close()

    threading.Thread(target=trickle, daemon=True).start()
    started = time.monotonic()
    with Client(f"http://127.0.0.1:{port}", timeout=1.0) as client, pytest.raises(TagsmithError) as ended:
        client.tags()
    assert ended.value.code == "timeout" and time.monotonic() - started < 5
    listener.close()
