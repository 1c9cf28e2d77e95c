"""A short soak: concurrent clients against a real ``tagsmith serve``; ``bench/soak.py`` runs a long one.

TAGSMITH_SOAK_SECONDS sets its length (default 10)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.soak import SERVER_ENV, report, soak
from infra.embedded import free_port
from tests.support.servers import TagsmithServer

pytestmark = pytest.mark.integration  # starts servers or processes, or loads the backbone


def test_soak(tmp_path: Path, record_property: pytest.RecordProperty) -> None:
    seconds = float(os.environ.get("TAGSMITH_SOAK_SECONDS", "10"))
    server = TagsmithServer(tmp_path / "data", free_port(), SERVER_ENV)
    server.start()
    try:
        assert server.process is not None
        figures = soak(server.base, server.process.pid, seconds, clients=4)
    finally:
        server.stop()
    print("\n" + report(figures))
    for name, value in figures.items():
        record_property(f"soak_{name}", value)
    assert figures["errors"] == 0, figures["first_errors"]
    assert figures["images_missing"] == 0 and figures["versions_missing"] == 0
    assert figures["tasks_failed"] == 0 and figures["tasks_unfinished"] == 0
    assert figures["rss_growth"] <= 0.10
