"""Fixtures: a real Redis server per session, fresh settings per test, the in-process gateway."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from shared.context import Services, get_services
from shared.settings import get_settings
from tests.servers import RedisServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def services(redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Services]:
    """Services on the test Redis (own key prefix and queue) and a local store in tmp_path."""
    name = uuid.uuid4().hex[:12]
    monkeypatch.setenv("TAGSMITH_REDIS_URL", redis_server.url)
    monkeypatch.setenv("TAGSMITH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TAGSMITH_KEY_PREFIX", f"test-{name}")
    monkeypatch.setenv("TAGSMITH_QUEUE_NAME", f"test-{name}")
    get_settings.cache_clear()
    get_services.cache_clear()
    yield get_services()
    get_settings.cache_clear()
    get_services.cache_clear()


@pytest.fixture
def client(services: Services) -> Iterator[TestClient]:
    from infra.gateway import app

    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def run_queued_jobs(services: Services) -> None:
    """Run every queued training in this process with the real worker class, then return."""
    from worker.main import make_worker

    make_worker().work(burst=True)
