"""Steps tests take again and again: settings of their own, adding images, teaching the cat tag,
running the queued trainings in process, a model record to pack."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from starlette.testclient import TestClient

from shared.core.settings import Settings
from shared.domain.services import Services
from shared.models.archive import ModelRecord
from shared.models.backbone import LITE0
from shared.models.heads import Head
from tests.support.photos import CAT, OTHERS, crops
from worker.main import TrainingWorker

D = LITE0.embedding_size + LITE0.style_size


def unique_name(prefix: str = "test") -> str:
    """A name no other test uses: Redis key prefixes, queue names and buckets are per test."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def settings_for(redis_url: str, data_dir: Path, **overrides: object) -> Settings:
    """Settings on the test Redis with their own key prefix and queue, a local store in ``data_dir``."""
    name = unique_name()
    base: dict[str, object] = {"redis_url": redis_url, "data_dir": data_dir, "key_prefix": name, "queue_name": name,
                               "allowed_hosts": "localhost,127.0.0.1,::1,testserver"}  # TestClient's host
    return Settings(**{**base, **overrides})


def run_queued_jobs(services: Services) -> None:
    """Run every queued training in this process with the real worker class, then return."""
    TrainingWorker(services).work(burst=True)


def hold_worker(services: Services, seconds: float) -> None:
    """A job that keeps its worker busy (workers call job functions with their services first)."""
    time.sleep(seconds)


def add(client: TestClient, data: bytes, image_id: str | None = None) -> str:
    url = "/custom/add" + (f"?image_id={image_id}" if image_id else "")
    response = client.post(url, files={"data": ("photo.jpg", data, "image/jpeg")})
    assert response.status_code == 201, response.text
    return response.json()["image_id"]


def teach_cat(client: TestClient, services: Services, positives: int = 6, negatives_each: int = 2) -> dict[str, Any]:
    """Add cat crops as positives and other photos as negatives, train, return the finished status."""
    for i, data in enumerate(crops(CAT, positives, seed=1)):
        add(client, data, f"cat-{i}")
        assert client.get(f"/custom/assign/cat-{i}/positive/cat").status_code == 200
    for name in OTHERS:
        for i, data in enumerate(crops(name, negatives_each, seed=2)):
            add(client, data, f"{name}-{i}")
            assert client.get(f"/custom/assign/{name}-{i}/negative/cat").status_code == 200
    task = client.get("/custom/train/cat").json()
    run_queued_jobs(services)
    return client.get(f"/status/{task['task_id']}").json()


def record(tag: str = "cat", weight: np.ndarray | None = None) -> ModelRecord:
    w = np.linspace(-1, 1, D, dtype=np.float32) if weight is None else weight
    return ModelRecord(tag=tag, version=3, threshold=0.4, trained_at="2026-01-01T00:00:00Z",
                       head=Head(w, 0.25), metrics={"roc_auc": 0.9})
