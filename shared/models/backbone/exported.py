"""CPU serving runtimes: the torch backbone exported once to ONNX, run by ONNX Runtime or OpenVINO.

The export is built from the torch definition on first use (or ahead of time with
``python -m shared.models.backbone.exported``) and cached under a name that changes whenever the
backbone's code does; nothing is downloaded. Both runtimes give the same three outputs as the
torch model (pooled embedding, style statistics, logits) to within 1e-4.

Numerical contract: every runtime computes in float32 on every machine. Heads are trained on the
worker's embeddings and scored on the predict functions' ones, so a runtime that picks a lower
precision by itself (OpenVINO chooses bfloat16 on CPUs with AVX512_BF16 or AMX unless told
otherwise) would silently serve other scores. Each runtime is asked for float32 explicitly and the
precision it compiled is read back; anything else refuses to start (``PrecisionError``).
"""

from __future__ import annotations

import hashlib
import os
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import shared.models.backbone.lite0 as lite0
import shared.models.backbone.spec as spec_module
from shared.models.backbone.preprocess import INPUT_SIZE, preprocess_batch
from shared.models.backbone.spec import LITE0, PRECISION, BackboneSpec, Features, require_float32

OUTPUTS = ("embedding", "style", "logits")
# Images per forward pass on the CPU: larger runs are no faster there (OpenVINO with 2 threads:
# 22-25 ms of CPU per image at 4 and at 8) and keep more memory: each image of the largest run
# holds about 30-40 MB of activations (a process that ran OpenVINO at 8 held 150 MB more than at 4).
MAX_RUN = 4


def export_path(cache_dir: Path) -> Path:
    """Where the export of the current backbone code lives: named by a hash of the code the graph
    comes from (the torch model, and the spec that says which blocks give the style statistics)."""
    digest = hashlib.sha256(b"".join(Path(str(m.__file__)).read_bytes() for m in (lite0, spec_module))).hexdigest()[:12]
    return Path(cache_dir).expanduser() / f"{LITE0.id}-{digest}.onnx"


def export_onnx(cache_dir: Path) -> Path:
    """Export the torch backbone to ONNX (dynamic batch) unless already cached; atomic. A new
    export replaces those of earlier backbone code in the same folder."""
    path = export_path(cache_dir)
    if path.exists():
        return path
    import torch

    model = lite0.EfficientNetLite0("cpu")

    class Graph(torch.nn.Module):  # type: ignore[misc]  # torch is Any to mypy (not followed)
        def __init__(self) -> None:
            super().__init__()
            self.net = model.model

        def forward(self, images: Any) -> tuple[Any, Any, Any]:
            return model.forward(images)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    example = torch.zeros(2, 3, INPUT_SIZE, INPUT_SIZE)
    # The tracer warns about every shape it turns into a constant (the style statistics' fixed
    # channel pairs among them): expected for this fixed-size graph, and ~150 lines on a console.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Graph().eval(),
            (example,),
            str(tmp),
            input_names=["images"],
            output_names=list(OUTPUTS),
            dynamic_axes={name: {0: "batch"} for name in ("images", *OUTPUTS)},
            opset_version=17,
            dynamo=False,
        )
    os.replace(tmp, path)
    for stale in path.parent.glob(f"{LITE0.id}-*.onnx"):  # exports of earlier backbone code, 19 MB each
        if stale != path:
            stale.unlink(missing_ok=True)
    return path


class _ExportedBackbone:
    """Shared by both runtimes: batch preprocessing and the Features result."""

    spec: BackboneSpec = LITE0
    precision: str = PRECISION

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    def lane(self) -> _ExportedBackbone:
        raise NotImplementedError

    def embed(self, images: list[Image.Image]) -> Features:
        return self.embed_pixels(preprocess_batch(images))

    def embed_pixels(self, batch: np.ndarray) -> Features:
        with self._lock:
            runs = [self._run(batch[i : i + MAX_RUN]) for i in range(0, len(batch), MAX_RUN)]
        embedding, style, logits = (np.concatenate(parts) for parts in zip(*runs, strict=True))
        return Features(embeddings=embedding, styles=style, logits=logits)


class OnnxRuntimeBackbone(_ExportedBackbone):
    def __init__(self, path: Path, threads: int) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # The arena keeps the buffers of the largest run (MAX_RUN images) for the next ones: with
        # a fresh allocation per run, the service spent about 70% more CPU per image.
        options.enable_cpu_mem_arena = True
        options.enable_mem_pattern = False  # no buffers kept per input shape (batch sizes vary)
        # Idle threads sleep instead of spinning: the same cores decode the next requests.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # IEEE float32 throughout: denormals kept (as torch keeps them), no bfloat16 fast math.
        options.add_session_config_entry("session.set_denormal_as_zero", "0")
        options.add_session_config_entry("mlas.enable_gemm_fastmath_arm64_bfloat16", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.path = path
        self.runtime = f"ONNX Runtime on CPU, {threads} threads"
        # ONNX Runtime's CPU provider computes in the graph's own types: check they are float32.
        types = {arg.type for arg in (*self.session.get_inputs(), *self.session.get_outputs())}
        if types != {"tensor(float)"}:
            require_float32("ONNX Runtime", f"the graph's types {sorted(types)}")

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        return list(self.session.run(list(OUTPUTS), {"images": batch}))

    def lane(self) -> OnnxRuntimeBackbone:
        return OnnxRuntimeBackbone(self.path, threads=1)


class OpenVinoBackbone(_ExportedBackbone):
    def __init__(self, path: Path, threads: int, graph: Any = None) -> None:
        """The export at ``path`` compiled for ``threads`` threads; from ``graph`` (the export
        already read, whose weights the compilations share) if given."""
        super().__init__()
        import openvino as ov

        self.graph = graph or ov.Core().read_model(str(path))
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32",
        }
        if threads == 1:  # pinned, single-threaded compilations (lanes) can all land on one core
            config["ENABLE_CPU_PINNING"] = False
        self.model = ov.Core().compile_model(self.graph, "CPU", config)
        self.precision = require_float32("OpenVINO", openvino_precision(self.model))
        self.path = path
        self.runtime = f"OpenVINO on CPU, {threads} threads"

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        result = self.model(batch)
        return [np.asarray(result[i]) for i in range(len(OUTPUTS))]

    def lane(self) -> OpenVinoBackbone:
        return OpenVinoBackbone(self.path, threads=1, graph=self.graph)


def openvino_precision(compiled: Any) -> str:
    """The precision a compiled OpenVINO model computes in, as ``f32``, ``bf16`` or ``f16``."""
    return str(compiled.get_property("INFERENCE_PRECISION_HINT").to_string())


if __name__ == "__main__":  # build the export ahead of time (the container images do, at build)
    from shared.core.settings import Settings

    print(export_onnx(Settings().model_cache_dir))
