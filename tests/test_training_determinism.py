"""A training is a pure function of the labelled images' contents and labels (and of the version it
fine-tunes from): not of image ids, the order images were added or labelled in, Redis' set order,
the number of BLAS threads or the CPU's SIMD instructions (``shared/domain/training.py``, ``shared/models/heads.py``)."""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from infra.gateway import create_gateway
from shared.core.blas import PINNED, cpu_flags, pinnable
from shared.domain import catalog
from shared.domain.services import Services, build_services
from shared.models.archive import ModelRecord
from shared.models.backbone import LITE0, Backbone
from shared.models.heads import train_head
from tests.support.api import add, run_queued_jobs, settings_for
from tests.support.photos import CAT, OTHERS, crops

pytestmark = pytest.mark.integration  # starts servers or processes, or loads the backbone

SIZES = (LITE0.embedding_size, LITE0.style_size)
POSITIVES = crops(CAT, 7, seed=21)
NEGATIVES = [data for name in OTHERS for data in crops(name, 2, seed=22)][:7]
# The first training: 5 + 5; the second adds 2 + 2 and fine-tunes from the first.
ROUNDS = ((POSITIVES[:5], NEGATIVES[:5]), (POSITIVES[5:], NEGATIVES[5:]))


def teach(client: TestClient, services: Services, order: random.Random | None, ids: str | None) -> list[ModelRecord]:
    """Add and label each round's examples (in a shuffled order, under ids named ``ids`` or generated
    by the server), train after each round, and return the stored versions."""
    versions = []
    for round_number, (positives, negatives) in enumerate(ROUNDS):
        examples = [(data, "positive") for data in positives] + [(data, "negative") for data in negatives]
        if order is not None:
            order.shuffle(examples)
        for i, (data, label) in enumerate(examples):
            image_id = add(client, data, None if ids is None else f"{ids}-{round_number}-{i}")
            assert client.get(f"/custom/assign/{image_id}/{label}/style").status_code == 200
        response = client.get("/custom/train/style")
        assert response.status_code == 202, response.text
        run_queued_jobs(services)
        status = client.get(f"/status/{response.json()['task_id']}").json()
        assert status["status"] == "finished", status.get("error")
        pointer = services.registry.model("style")
        assert pointer is not None
        versions.append(catalog.load_version(services, pointer.tag, pointer.key))
    return versions


def comparable(record: ModelRecord) -> dict[str, Any]:
    """What must be equal bit for bit: everything but the training time and the images' ids."""
    metrics = dict(record.metrics)
    metrics["most_wrong"] = [(w["type"], w["score"]) for w in metrics["most_wrong"]]
    return {"weight": record.head.weight.tobytes(), "bias": record.head.bias, "threshold": record.threshold,
            "form": record.form, "version": record.version, "metrics": metrics}


def test_the_same_labelled_contents_train_the_same_archives_under_any_ids_and_order(
    client: TestClient, services: Services, redis_server: Any, tmp_path: Path, backbone: Backbone,
) -> None:
    first = teach(client, services, None, "a")
    runs = [first]
    for n, ids in enumerate((None, "z")):  # generated ids, then others of ours; shuffled every time
        other = build_services(settings_for(redis_server.url, tmp_path / f"other-{n}"), backbone)
        with TestClient(create_gateway(services=other), raise_server_exceptions=False) as other_client:
            runs.append(teach(other_client, other, random.Random(n), ids))
    for run in runs[1:]:
        for version, again in zip(first, run, strict=True):
            assert comparable(again) == comparable(version)
    assert first[1].metrics["fine_tuned_from"] == 1
    assert first[0].metrics["folds"] >= 2 and "roc_auc" in first[0].metrics


def test_one_or_two_blas_threads_train_the_same_head(backbone: Backbone) -> None:
    images = [Image.open(io.BytesIO(data)).convert("RGB") for data in [*crops(CAT, 6, seed=23), *crops("coffee", 6, seed=23)]]
    features = backbone.embed(images).vectors
    labels = np.array([1] * 6 + [0] * 6)
    trained = []
    for threads in (1, 2):
        with threadpool_limits(threads, user_api="blas"):
            trained.append(train_head(features, labels, SIZES, seed=5))
    one, two = trained
    assert one.head.weight.tobytes() == two.head.weight.tobytes() and one.head.bias == two.head.bias
    assert (one.threshold, one.form, one.metrics, one.most_wrong) == (two.threshold, two.form, two.metrics, two.most_wrong)


# Heads on synthetic features at 5+5, 10+10 and 48+48: where OpenBLAS's AVX-512 kernels are used,
# most of them differ from the AVX2 kernels' in their last bits.
TRAIN_HEADS = """
import shared  # first, as every tagsmith entry point: it pins the BLAS kernels
import hashlib, json
import numpy as np
from threadpoolctl import threadpool_limits
from shared.core.blas import kernels
from shared.models.backbone import LITE0
from shared.models.heads import train_head
from shared.models.style_prior import style_prior

sizes = (LITE0.embedding_size, LITE0.style_size)
rng = np.random.default_rng(7)
for n in (5, 10, 48):
    for shift in (0.05, 0.2):
        x = rng.normal(size=(2 * n, sum(sizes))).astype(np.float32)
        y = np.array([1] * n + [0] * n)
        x[y == 1, :40] += shift
        with threadpool_limits(1, user_api="blas"):
            h = train_head(x, y, sizes, seed=n, prior=style_prior(LITE0.id))
        print(hashlib.sha256(h.head.weight.tobytes() + np.float64(h.head.bias).tobytes()
              + json.dumps([h.threshold, h.form, h.metrics], sort_keys=True).encode()).hexdigest())
print(kernels())
"""


@pytest.mark.skipif(not pinnable(), reason="the pinned BLAS kernels need an x86-64 CPU with AVX2 and FMA")
def test_heads_are_bit_identical_on_avx2_and_avx512_machines() -> None:
    """tagsmith pins OpenBLAS's Haswell kernels before numpy loads, so a head trained here equals,
    bit for bit, one trained on an AVX2-only machine (emulated: Haswell's kernels and numpy's AVX-512
    loops off). Left to itself, an AVX-512 CPU takes SkylakeX's kernels and 5 of these 6 heads
    differ."""

    def train(**env: str) -> list[str]:
        clean = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "NPY_DISABLE_CPU_FEATURES")}
        done = subprocess.run([sys.executable, "-c", TRAIN_HEADS], env={**clean, **env}, cwd=Path(__file__).parents[1],
                              capture_output=True, text=True, timeout=300, check=True)
        return done.stdout.split()

    here = train()
    assert here[-1] == PINNED
    avx2 = train(OPENBLAS_CORETYPE="Haswell",
                 **({"NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR"} if "avx512f" in cpu_flags() else {}))
    assert here == avx2
