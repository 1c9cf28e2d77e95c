"""Settings come from the environment under one prefix; device selection works without a GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.core.settings import Settings
from shared.data.store import split_endpoint
from shared.domain.services import Services
from shared.models.backbone import open_backbone
from shared.models.backbone.lite0 import resolve_device
from tests.support.servers import ROOT, clean_env, free_port


def test_every_setting_comes_from_its_tagsmith_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "TAGSMITH_REDIS_URL": "redis://cache:6380/2",
        "TAGSMITH_S3_ENDPOINT": "minio:9000",
        "TAGSMITH_S3_ACCESS_KEY": "key",
        "TAGSMITH_S3_SECRET_KEY": "secret",
        "TAGSMITH_S3_BUCKET": "my-bucket",
        "TAGSMITH_S3_SECURE": "true",
        "TAGSMITH_S3_REGION": "eu-west-1",
        "TAGSMITH_DEVICE": "cuda:1",
        "TAGSMITH_HEARTBEAT_TTL_S": "12",
        "TAGSMITH_MAINTENANCE_INTERVAL_S": "4",
        "TAGSMITH_ABANDONED_RETRIES": "0",
        "TAGSMITH_MAX_UPLOAD_BYTES": "1000",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert (settings.redis_url, settings.s3_endpoint) == ("redis://cache:6380/2", "minio:9000")
    assert settings.s3_bucket == "my-bucket"
    assert settings.s3_secure is True and settings.s3_region == "eu-west-1" and settings.device == "cuda:1"
    assert (settings.heartbeat_ttl_s, settings.maintenance_interval_s, settings.abandoned_retries) == (12, 4, 0)
    assert settings.max_upload_bytes == 1000


@pytest.mark.parametrize(
    ("name", "value"),
    [("TAGSMITH_DEVICE", "gpu"), ("TAGSMITH_DEVICE", "cuda:x"), ("TAGSMITH_S3_BUCKET", "Has_Capitals"),
     ("TAGSMITH_S3_BUCKET", "ab"), ("TAGSMITH_HEARTBEAT_TTL_S", "0"), ("TAGSMITH_ABANDONED_RETRIES", "-1")],
)
def test_bad_settings_are_refused_at_start(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name.removeprefix("TAGSMITH_").lower()):
        Settings()


def test_s3_endpoint_scheme_sets_https() -> None:
    assert split_endpoint("minio:9000", False) == ("minio:9000", False)
    assert split_endpoint("https://s3.example.com", False) == ("s3.example.com", True)
    assert split_endpoint("http://minio:9000/", True) == ("minio:9000", False)


@pytest.mark.parametrize(
    ("requested", "cuda", "devices", "expected"),
    [("auto", False, 0, "cpu"), ("auto", True, 1, "cuda"), ("cpu", True, 1, "cpu"),
     ("cuda", True, 1, "cuda"), ("cuda:1", True, 2, "cuda:1")],
)
def test_device_selection(requested: str, cuda: bool, devices: int, expected: str) -> None:
    assert resolve_device(requested, cuda, devices) == expected


def test_asking_for_cuda_where_there_is_none_says_so() -> None:
    with pytest.raises(RuntimeError, match="no CUDA device"):
        resolve_device("cuda", False, 0)
    with pytest.raises(RuntimeError, match="only 1 CUDA device"):
        resolve_device("cuda:1", True, 1)


@pytest.mark.integration  # loads the torch backbone
def test_the_backbone_runs_where_the_setting_says() -> None:
    import torch

    if torch.cuda.is_available():
        assert open_backbone("torch", "auto", 0, Path()).device.type == "cuda"  # type: ignore[attr-defined]
        return
    assert open_backbone("torch", "auto", 0, Path()).device.type == "cpu"  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="TAGSMITH_DEVICE=cuda but torch sees no CUDA device"):
        open_backbone("torch", "cuda", 0, Path())


def run_check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = clean_env(**env)
    return subprocess.run([sys.executable, "-m", "infra.cli", "check"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_check_command_says_whether_redis_and_the_store_answer(services: Services) -> None:
    ready = run_check({"TAGSMITH_REDIS_URL": services.settings.redis_url,
                       "TAGSMITH_DATA_DIR": str(services.settings.data_dir)})
    assert ready.returncode == 0 and ready.stdout.strip() == "ok"
    down = run_check({"TAGSMITH_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
                      "TAGSMITH_DATA_DIR": str(services.settings.data_dir)})
    assert down.returncode == 1 and "not ready" in down.stderr
