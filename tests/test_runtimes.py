"""The exported runtimes give the torch model's outputs, so heads trained anywhere score the same.

The parity checks hold on every CPU because each runtime is asked for float32 and reports what it
compiled: on a CPU with AVX512_BF16 or AMX, OpenVINO left to itself computes in bfloat16 (its
embeddings then differ from torch's by up to 0.2) and reports ``bf16`` here.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.models.backbone import LITE0, Features, PrecisionError, choose_runtime, preprocess
from shared.models.backbone.exported import (
    OnnxRuntimeBackbone,
    OpenVinoBackbone,
    export_onnx,
    export_path,
    openvino_precision,
)
from shared.models.backbone.lite0 import EfficientNetLite0, enforce_torch_float32
from shared.models.backbone.spec import require_float32
from shared.web.batching import MicroBatcher
from tests.support.photos import CAT, OTHERS, photo

pytestmark = pytest.mark.integration  # starts servers or processes, or loads the backbone


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return [photo(name) for name in (CAT, *OTHERS)]


@pytest.fixture(scope="module")
def reference(images: list[Image.Image]) -> Features:
    return EfficientNetLite0("cpu").embed(images)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    stale = folder / f"{LITE0.id}-000000000000.onnx"  # an export of earlier backbone code
    stale.write_bytes(b"old graph")
    unrelated = folder / "notes.onnx"
    unrelated.write_bytes(b"not ours")
    path = export_onnx(folder)
    assert path == export_path(folder) and export_onnx(folder) == path  # cached, not rebuilt
    assert not stale.exists() and unrelated.exists()
    return path


@pytest.mark.parametrize("runtime", [OnnxRuntimeBackbone, OpenVinoBackbone])
def test_exported_runtime_matches_torch(runtime, exported: Path, images: list[Image.Image], reference: Features) -> None:  # type: ignore[no-untyped-def]
    backbone = runtime(exported, threads=2)
    assert backbone.precision == "f32"
    features = backbone.embed(images)
    for name in ("embeddings", "styles", "logits"):
        got, want = getattr(features, name), getattr(reference, name)
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-4, name


def test_openvino_is_compiled_for_float32_whatever_the_cpu(exported: Path) -> None:
    import openvino as ov

    # What the CPU plugin would pick by itself: bfloat16 on CPUs with BF16, float32 elsewhere.
    default = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").to_string()
    backbone = OpenVinoBackbone(exported, threads=2)
    assert openvino_precision(backbone.model) == "f32", f"the CPU's own choice is {default}"


def test_a_runtime_reporting_another_precision_is_refused() -> None:
    assert require_float32("OpenVINO", "f32") == "f32"
    for reported in ("bf16", "f16"):
        with pytest.raises(PrecisionError, match=f"OpenVINO would compute the backbone in {reported}"):
            require_float32("OpenVINO", reported)


def test_torch_is_held_to_ieee_float32() -> None:
    import torch

    torch.backends.cudnn.conv.fp32_precision = "tf32"  # torch's own default for cuDNN convolutions
    torch.backends.mkldnn.conv.fp32_precision = "bf16"
    try:
        enforce_torch_float32(torch)
        assert torch.backends.cudnn.conv.fp32_precision == torch.backends.mkldnn.conv.fp32_precision == "ieee"
    finally:
        torch.backends.fp32_precision = "ieee"


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
    batcher = MicroBatcher(backbone, max_batch=8, lanes=1)  # one core: no lanes, shared batches

    def prepare(i: int) -> tuple[np.ndarray, Callable[[], int]]:
        return preprocess(images[i % len(images)]), lambda: i

    async def all_at_once() -> list[tuple[Features, int]]:
        return await asyncio.gather(*(batcher.embed(partial(prepare, i)) for i in range(2 * len(images))))

    outcomes = asyncio.run(all_at_once())
    assert [extra for _, extra in outcomes] == list(range(2 * len(images)))  # what prepare returned, too
    results = [features for features, _ in outcomes]
    assert sum(sizes) == 2 * len(images) and len(sizes) < 2 * len(images)  # batched, none lost
    for i, result in enumerate(results):  # each caller gets its own image's features
        assert np.abs(result.embeddings[0] - reference.embeddings[i % len(images)]).max() <= 1e-4


def test_concurrent_requests_run_on_lanes(exported: Path, images: list[Image.Image], reference: Features) -> None:
    """Under load every core's lane embeds whole images on its own single-threaded copy; each
    caller gets its own image's features, and the first (alone) runs on the all-threads model."""
    batcher = MicroBatcher(OpenVinoBackbone(exported, threads=2), max_batch=8, lanes=2)
    threads: dict[int, str] = {}

    def prepare(i: int) -> tuple[np.ndarray, Callable[[], int]]:
        threads[i] = threading.current_thread().name
        return preprocess(images[i % len(images)]), lambda: i

    async def all_at_once() -> list[tuple[Features, int]]:
        return await asyncio.gather(*(batcher.embed(partial(prepare, i)) for i in range(3 * len(images))))

    outcomes = asyncio.run(all_at_once())
    assert [extra for _, extra in outcomes] == list(range(3 * len(images)))
    for i, (features, _) in enumerate(outcomes):
        assert np.abs(features.embeddings[0] - reference.embeddings[i % len(images)]).max() <= 1e-4
        assert np.abs(features.styles[0] - reference.styles[i % len(images)]).max() <= 1e-4
    assert not threads[0].startswith("lane") and {"lane-0", "lane-1"} <= set(threads.values())
    asyncio.run(batcher.close())


def test_a_lane_outlives_a_broken_request(exported: Path, images: list[Image.Image]) -> None:
    """A request whose preparation breaks the batch's own bookkeeping fails alone: every other
    request is answered, and the lanes serve the next ones."""
    batcher = MicroBatcher(OnnxRuntimeBackbone(exported, threads=2), max_batch=8, lanes=2)

    def prepare(i: int) -> tuple[np.ndarray, Callable[[], int]]:
        if i == 3:
            return 42  # type: ignore[return-value]  # not (pixels, later)
        return preprocess(images[i % len(images)]), lambda: i

    async def burst(count: int) -> list[object]:
        return await asyncio.gather(*(batcher.embed(partial(prepare, i)) for i in range(count)), return_exceptions=True)

    first = asyncio.run(burst(6))
    assert isinstance(first[3], TypeError)
    assert [answer[1] for k, answer in enumerate(first) if k != 3 and isinstance(answer, tuple)] == [0, 1, 2, 4, 5]
    assert all(isinstance(answer, tuple) for answer in asyncio.run(burst(6))[:3])
    asyncio.run(batcher.close())


@pytest.mark.parametrize("lanes", [1, 2], ids=["shared batches", "lanes"])
def test_a_failed_preparation_fails_only_its_own_request(exported: Path, images: list[Image.Image], lanes: int) -> None:
    batcher = MicroBatcher(OnnxRuntimeBackbone(exported, threads=2), max_batch=8, lanes=lanes)

    def later(i: int) -> int:
        if i == 4:
            raise ValueError("no styles")
        return i

    def prepare(i: int) -> tuple[np.ndarray, Callable[[], int]]:
        if i == 1:
            raise ValueError("not an image")
        if i == 2:
            raise StopIteration  # no future can hold one: it must still reach its caller
        return preprocess(images[i % len(images)]), partial(later, i)

    async def together() -> tuple[list[object], tuple[Features, int]]:
        first = await asyncio.gather(*(batcher.embed(partial(prepare, i)) for i in range(5)), return_exceptions=True)
        return first, await batcher.embed(partial(prepare, 5))  # the batch loop goes on; a lone image

    (first, bad, stopped, fourth, no_styles), after = asyncio.run(together())
    assert isinstance(bad, ValueError) and str(bad) == "not an image"
    assert isinstance(stopped, RuntimeError)
    assert isinstance(no_styles, ValueError) and str(no_styles) == "no styles"
    assert isinstance(first, tuple) and isinstance(fourth, tuple) and (first[1], fourth[1], after[1]) == (0, 3, 5)
    assert first[0].embeddings.shape == fourth[0].embeddings.shape == after[0].embeddings.shape == (1, 1280)
