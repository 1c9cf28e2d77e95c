"""Opening the backbone: which runtime runs it on this machine, and with how many threads."""

from __future__ import annotations

import shutil
from pathlib import Path

from shared.core.process import usable_cores
from shared.core.settings import RUNTIMES
from shared.models.backbone.spec import Backbone


def choose_runtime(runtime: str, device: str) -> str:
    """'auto': torch on CUDA, else OpenVINO, else ONNX Runtime, else torch.

    OpenVINO comes first on CPU: on this project's 2-core machines it spent about 27 ms of CPU
    per image at batch 8 against ONNX Runtime's 33 (``bench/speed.py`` prints both every run),
    and the service's peak RSS with it was 476–506 MB in three runs (the target is 600).
    """
    if runtime != "auto":
        return runtime
    if device.startswith("cuda") or (device == "auto" and _cuda_available()):
        return "torch"
    for name in ("openvino", "onnxruntime"):
        try:
            __import__(name)
            return name
        except ImportError:
            continue
    return "torch"


def _cuda_available() -> bool:
    """Whether torch sees a GPU; without an NVIDIA driver, answered without importing torch."""
    if not Path("/proc/driver/nvidia/version").exists() and shutil.which("nvidia-smi") is None:
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def open_backbone(runtime: str, device: str, threads: int, cache_dir: Path) -> Backbone:
    """The backbone on the chosen runtime; exported runtimes use all cores unless ``threads`` is set."""
    chosen = choose_runtime(runtime, device)
    if chosen == "torch":
        from shared.models.backbone.lite0 import EfficientNetLite0

        return EfficientNetLite0(device, threads)
    from shared.models.backbone.exported import OnnxRuntimeBackbone, OpenVinoBackbone, export_onnx

    cpu_threads = threads or usable_cores()
    path = export_onnx(cache_dir)
    if chosen == "openvino":
        return OpenVinoBackbone(path, cpu_threads)
    if chosen == "onnxruntime":
        return OnnxRuntimeBackbone(path, cpu_threads)
    raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
