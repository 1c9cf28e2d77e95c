"""The exported runtimes give the torch model's outputs, so heads trained anywhere score the same."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.batching import MicroBatcher
from shared.models.backbone import EfficientNetLite0, Features, preprocess
from shared.models.runtimes import OnnxRuntimeBackbone, OpenVinoBackbone, choose_runtime, export_onnx, export_path
from tests.photos import CAT, OTHERS, photo


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return [photo(name) for name in (CAT, *OTHERS)]


@pytest.fixture(scope="module")
def reference(images: list[Image.Image]) -> Features:
    return EfficientNetLite0("cpu").embed(images)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    path = export_onnx(folder)
    assert path == export_path(folder) and export_onnx(folder) == path  # cached, not rebuilt
    return path


@pytest.mark.parametrize("runtime", [OnnxRuntimeBackbone, OpenVinoBackbone])
def test_exported_runtime_matches_torch(runtime, exported: Path, images: list[Image.Image], reference: Features) -> None:  # type: ignore[no-untyped-def]
    features = runtime(exported, threads=2).embed(images)
    for name in ("embeddings", "styles", "logits"):
        got, want = getattr(features, name), getattr(reference, name)
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-4, name


def test_auto_runtime_uses_torch_on_cuda_and_an_exported_graph_on_cpu() -> None:
    assert choose_runtime("auto", "cuda") == "torch"
    assert choose_runtime("auto", "cpu") == "openvino"
    assert choose_runtime("onnxruntime", "cpu") == "onnxruntime"


def test_concurrent_requests_share_batches(exported: Path, images: list[Image.Image], reference: Features) -> None:
    backbone = OnnxRuntimeBackbone(exported, threads=2)
    sizes: list[int] = []
    original = backbone.embed_pixels

    def counting(batch: np.ndarray) -> Features:
        sizes.append(len(batch))
        return original(batch)

    backbone.embed_pixels = counting  # type: ignore[method-assign]
    batcher = MicroBatcher(backbone, max_batch=8)

    async def all_at_once() -> list[Features]:
        return await asyncio.gather(*(batcher.embed(preprocess(image)) for image in images * 2))

    results = asyncio.run(all_at_once())
    assert sum(sizes) == 2 * len(images) and len(sizes) < 2 * len(images)  # batched, none lost
    for i, result in enumerate(results):  # each caller gets its own image's features
        assert np.abs(result.embeddings[0] - reference.embeddings[i % len(images)]).max() <= 1e-4
