"""Optional API keys: with TAGSMITH_API_KEYS set, no request without a valid key is served."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.routing import Route
from starlette.testclient import TestClient

from infra.embedded import start_redis
from shared.domain.services import Services
from shared.web.auth import is_public, key_matches
from tagsmith_client import Client, TagsmithError
from tests.support.photos import CAT, crops

KEYS = ("first-key-0123456789", "second-key-abcdefghij")
PARAMS = {"image_id": "img1", "tag": "cat", "type": "positive", "task_id": "abc", "version": "1"}


@pytest.fixture
def api_keys(services: Services) -> None:
    services.settings.api_keys = f" {KEYS[0]}, {KEYS[1]} ,"


@pytest.fixture
def keyed(api_keys: None, client: TestClient) -> Iterator[TestClient]:
    yield client


def every_route_and_method() -> list[tuple[str, str]]:
    from infra.gateway import app

    out = []
    for route in app.routes:
        if isinstance(route, Route) and route.methods:
            path = re.sub(r"{(\w+)(:\w+)?}", lambda m: PARAMS[m.group(1)], route.path)
            out += [(method, path) for method in sorted(route.methods - {"HEAD"})]
    return out


BAD_HEADERS = [
    {},
    {"X-API-Key": ""},
    {"X-API-Key": "wrong"},
    {"X-API-Key": KEYS[0][:-1]},
    {"X-API-Key": KEYS[0] + "x"},
    {"X-API-Key": KEYS[0].upper()},
    {"X-API-Key": f"{KEYS[0]},{KEYS[1]}"},
    {"Authorization": "Bearer wrong"},
    {"Authorization": "Bearer "},
    {"Authorization": f"Basic {KEYS[0]}"},
    {"Authorization": KEYS[0]},
    {"X-Api-Key-Other": KEYS[0]},
]


def test_no_unauthorised_request_is_served(keyed: TestClient, services: Services) -> None:
    good = {"X-API-Key": KEYS[1]}
    photo = crops(CAT, 1, seed=0)[0]
    assert keyed.post("/custom/add?image_id=img1", files={"data": ("a.jpg", photo)}, headers=good).status_code == 201
    assert keyed.get("/custom/assign/img1/positive/cat", headers=good).status_code == 200
    before = (services.registry.image_ids(), services.registry.examples("cat"), services.registry.tags())
    routes = [(m, p) for m, p in every_route_and_method() if not is_public(p)]
    tried, served = 0, []
    for method, path in routes:
        for headers in BAD_HEADERS:
            files = {"data": ("a.jpg", photo)} if method == "POST" else None
            response = keyed.request(method, path, headers=headers, files=files)
            tried += 1
            if response.status_code != 401:
                served.append((method, path, headers, response.status_code))
            else:
                assert response.json()["error"] == "unauthorized"
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
    for path in ("/no/such/route", "/openapi.json", "/docs"):
        tried += 1
        if keyed.get(path).status_code != 401:
            served.append(("GET", path, {}, keyed.get(path).status_code))
    print(f"\napi keys: {len(served)} of {tried} unauthorised requests served "
          f"({len(routes)} route-methods x {len(BAD_HEADERS)} bad credentials)")
    assert served == []
    assert (services.registry.image_ids(), services.registry.examples("cat"), services.registry.tags()) == before


def test_valid_keys_and_public_routes(keyed: TestClient) -> None:
    for headers in ({"X-API-Key": KEYS[0]}, {"X-API-Key": KEYS[1]}, {"Authorization": f"Bearer {KEYS[0]}"},
                    {"authorization": f"bearer {KEYS[1]}"}):
        assert keyed.get("/custom/tags", headers=headers).status_code == 200, headers
        assert keyed.get("/openapi.json", headers=headers).status_code == 200
    for path in ("/health", "/ready", "/", "/static/app.js"):
        assert keyed.get(path).status_code == 200, path
    assert keyed.get("/metrics").status_code == 401


def test_without_keys_configured_everything_is_open(client: TestClient) -> None:
    assert client.get("/custom/tags").status_code == 200
    assert client.get("/custom/tags", headers={"X-API-Key": "anything"}).status_code == 200


def test_python_client_sends_the_key(keyed: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    with Client(http=keyed, api_key=KEYS[0]) as api:
        assert api.tags() == []
    with Client(http=keyed) as api, pytest.raises(TagsmithError) as refused:
        api.tags()
    assert (refused.value.status, refused.value.code) == (401, "unauthorized")
    monkeypatch.setenv("TAGSMITH_API_KEY", KEYS[1])
    with Client(http=keyed) as api:
        assert api.tags() == []


def test_keys_are_compared_exactly() -> None:
    keys = [k.encode() for k in KEYS]
    assert key_matches(KEYS[0].encode(), keys) and key_matches(KEYS[1].encode(), keys)
    assert not key_matches(b"", keys) and not key_matches(KEYS[0].encode()[:-1], keys)


def test_embedded_redis_needs_its_password_and_refuses_admin_commands(tmp_path: Path) -> None:
    """`tagsmith serve`'s own Redis listens on loopback, which every local program reaches: without
    the password it answers nothing, with it CONFIG and MODULE (file writes, loading code) are
    refused, and the password is on no command line."""
    import redis as redis_client

    process, url = start_redis(tmp_path / "redis", fsync=None)
    try:
        password = redis_client.Redis.from_url(url).connection_pool.connection_kwargs["password"]
        assert len(password) >= 32
        port = redis_client.Redis.from_url(url).connection_pool.connection_kwargs["port"]
        anonymous = redis_client.Redis(host="127.0.0.1", port=port)
        with pytest.raises(redis_client.AuthenticationError):
            anonymous.set("tagsmith:probe", "1")
        authorised = redis_client.Redis.from_url(url)
        assert authorised.set("tagsmith:probe", "1") and authorised.get("tagsmith:probe") == b"1"
        for command in (("CONFIG", "SET", "dir", str(tmp_path)), ("MODULE", "LIST"), ("DEBUG", "SLEEP", "0")):
            with pytest.raises(redis_client.ResponseError, match="unknown command"):
                authorised.execute_command(*command)
        assert password.encode() not in Path(f"/proc/{process.pid}/cmdline").read_bytes()
    finally:
        process.terminate()
        process.wait(10)
