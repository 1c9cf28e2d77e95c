"""The whole stack (a real ``tagsmith serve`` on a free port) against bad input, limits and stalls:
never a 5xx, the server stays up, and a refused request stores nothing."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import requests

from infra.embedded import free_port
from shared.core.errors import DomainError
from shared.domain.services import Services
from tests.support.badinput import Case, Sample, cases
from tests.support.servers import RedisServer, TagsmithServer

pytestmark = pytest.mark.integration  # starts servers or processes, or loads the backbone

PREFIX = "hard"
UPLOAD_LIMIT = 1_000_000
ARCHIVE_LIMIT = 2_000_000
MAX_TAGS = 4
BODY_TIMEOUT_S = 2


class Stack:
    def __init__(self, server: TagsmithServer, redis_server: RedisServer) -> None:
        self.server = server
        self.redis = redis.Redis.from_url(redis_server.url)
        self.objects = server.data_dir / "objects"

    def snapshot(self) -> tuple[dict[bytes, bytes | None], dict[str, int], int]:
        """Every tagsmith key's value, every stored object's size, and the training queue's length;
        not what the worker derives meanwhile from images stored before (embeddings, the library's
        packs and scores, and the temp files of those writes)."""
        derived = (f"{PREFIX}:library:".encode(), f"{PREFIX}:scores:".encode())
        keys = {key: self.redis.dump(key) for key in self.redis.scan_iter(match=f"{PREFIX}:*")
                if not key.startswith(derived)}
        files = {}
        for path in self.objects.rglob("*"):
            name = str(path.relative_to(self.objects))
            if not name.startswith(("library/", "embeddings/", ".tmp/")) and path.is_file():  # .tmp: writes in flight
                files[name] = path.stat().st_size
        return keys, files, int(self.redis.llen(f"rq:queue:{PREFIX}-queue"))

    def alive(self) -> bool:
        return requests.get(self.server.base + "/health", timeout=5).ok


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("hardening")
    redis_server = RedisServer(folder / "redis")
    env = {
        "TAGSMITH_REDIS_URL": redis_server.url,
        "TAGSMITH_KEY_PREFIX": PREFIX,
        "TAGSMITH_QUEUE_NAME": f"{PREFIX}-queue",
        "TAGSMITH_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT),
        "TAGSMITH_MAX_ARCHIVE_BYTES": str(ARCHIVE_LIMIT),
        "TAGSMITH_MAX_TAGS": str(MAX_TAGS),
        "TAGSMITH_BODY_READ_TIMEOUT_S": str(BODY_TIMEOUT_S),
        "TAGSMITH_API_KEYS": "",
    }
    server = TagsmithServer(folder / "data", free_port(), env)
    server.start()
    yield Stack(server, redis_server)
    server.stop()
    redis_server.stop()


def send(base: str, case: Case) -> requests.Response:
    return requests.request(case.method, base + case.path, files=case.files, data=case.body or case.data,
                            headers=case.headers, timeout=60)


def test_bad_input_matrix(stack: Stack, record_property: pytest.RecordProperty) -> None:
    base = stack.server.base
    sample = Sample()
    assert requests.post(base + "/custom/add?image_id=img1", files={"data": ("a.jpg", sample.jpeg)}).status_code == 201
    assert requests.get(base + "/custom/assign/img1/positive/cat").status_code == 200
    requests.get(base + "/custom/images")  # builds the image index once
    matrix = cases(sample, "img1", "cat", UPLOAD_LIMIT, ARCHIVE_LIMIT)
    assert len({c.name for c in matrix}) == len(matrix)
    wrong, server_errors, changed = [], [], []
    for case in matrix:
        before = stack.snapshot()
        response = send(base, case)
        if response.status_code >= 500:
            server_errors.append((case.name, response.status_code, response.text[:200]))
        if response.status_code not in case.expect:
            wrong.append((case.name, response.status_code, response.text[:200]))
        if response.status_code >= 400:
            body = response.json()
            if set(body) != {"error", "message"} or not body["message"]:
                wrong.append((case.name, "not a JSON error", response.text[:200]))
        if case.refused and stack.snapshot() != before:
            changed.append(case.name)
    rotated = requests.get(base + "/custom/images/rotated").json()
    alive = stack.alive()
    print(f"\nbad-input matrix: {len(matrix)} cases, {sum(c.refused for c in matrix)} to be refused, "
          f"{len(server_errors)} 5xx, {len(wrong)} unexpected, {len(changed)} refused requests changed state, "
          f"server alive: {alive}")
    for name, value in (("cases", len(matrix)), ("server_errors", len(server_errors)), ("changed", len(changed))):
        record_property(f"bad_input_{name}", value)
    assert server_errors == []
    assert wrong == [], "\n".join(map(str, wrong))
    assert changed == []
    assert alive
    assert (rotated["width"], rotated["height"]) == (80, 120)  # EXIF orientation applied


def test_tags_beyond_the_limit_are_refused(stack: Stack) -> None:
    base = stack.server.base
    existing = {entry["tag"] for entry in requests.get(base + "/custom/tags").json()["tags"]}
    for i in range(MAX_TAGS - len(existing)):
        assert requests.get(base + f"/custom/assign/img1/positive/limit-{i}").status_code == 200
    before = stack.snapshot()
    refused = requests.get(base + "/custom/assign/img1/positive/one-too-many")
    assert refused.status_code == 409 and refused.json()["error"] == "too_many_tags", refused.text
    assert "TAGSMITH_MAX_TAGS" in refused.json()["message"]
    assert stack.snapshot() == before
    # Existing tags still take examples.
    assert requests.get(base + "/custom/assign/img1/negative/limit-0").status_code == 200


def _raw_request(port: int, head: bytes, body: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(head + body)
    return sock


def _read_response(sock: socket.socket) -> bytes:
    """Read until the JSON error body has arrived or the server closes the connection."""
    chunks: list[bytes] = []
    while not b"".join(chunks).rstrip().endswith(b"}"):
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("path", ["/custom/add?image_id=stalled", "/set_state", "/predict"])
def test_stalled_body_gets_408_and_frees_the_server(stack: Stack, path: str) -> None:
    """Headers, then a few bytes of a 100 KB body, then nothing: a 408 JSON error, and nothing stored."""
    before = stack.snapshot()
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            "Content-Length: 100000\r\n\r\n").encode()
    stalled = [_raw_request(stack.server.port, head, b"--b\r\nContent-Disposition: form-data; name=\"data\"")
               for _ in range(4)]
    try:
        for sock in stalled:
            answer = _read_response(sock)
            status_line = answer.partition(b"\r\n")[0]
            assert b" 408 " in status_line, answer[:300]
            assert b'"error":"body_timeout"' in answer
    finally:
        for sock in stalled:
            sock.close()
    assert stack.alive()
    assert stack.snapshot() == before


def test_concurrent_new_tags_never_go_over_the_limit(services: Services) -> None:
    """The limit check and the assignment are one atomic step: 40 new tags racing for the last 5
    places get exactly 5 of them, and every other one a clear 409."""
    registry = services.registry
    registry.commit_image("img", registry.reserve_image("img"), {"format": "JPEG", "width": 1, "height": 1, "bytes": 1})
    for i in range(5):
        registry.assign("img", f"old-{i}", "positive", max_tags=10)

    def assign(i: int) -> str:
        try:
            registry.assign("img", f"new-{i}", "positive", max_tags=10)
            return "ok"
        except DomainError as exc:
            return exc.code

    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(assign, range(40)))
    assert outcomes.count("ok") == 5 and outcomes.count("too_many_tags") == 35
    assert len(registry.tags()) == 10
    registry.assign("img", "old-0", "negative", max_tags=10)  # existing tags still take examples
    assert registry.examples("old-0") == ([], ["img"])
