"""JPEG bytes to the backbone's input on a torch device: decoded there (nvJPEG on CUDA, through
``torchvision.io.decode_jpeg``), turned upright, resized and centre-cropped as ``preprocess`` does,
with no copy of the pixels through host memory. The GPU worker's embedding path uses it
(``shared.domain.embeddings``); the same code runs with ``device="cpu"`` (libjpeg-turbo), which is
how the tests check it.

What it does not take goes to the CPU path (``decoding`` and ``preprocess``), one image at a time:
anything but a complete 8-bit greyscale or YCbCr JPEG (PNGs, CMYK or Adobe RGB JPEGs, multi-picture
files), an image over the pixel limit (read from its header), and anything the decoder refuses.

The result is not bit-identical to the CPU path: that decodes in draft mode (DCT scaling to 1/2,
1/4 or 1/8) and resamples in two 8-bit passes, this decodes at full size and resamples once in
float32 (``interpolate``'s antialiased bicubic is Pillow's a = -0.5 kernel); the difference and its
tolerance are in the README ("GPU worker").
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.models.backbone.preprocess import INPUT_SIZE, RESIZE_SIZE
from shared.models.backbone.spec import Features
from shared.models.decoding import open_image

# Decoded pixels held on the device at once (3 bytes each as uint8, 4 more per pixel while one
# image is converted to float32): a batch of 24 MP photos is decoded a few at a time.
DEVICE_BUDGET_PIXELS = 256_000_000


@dataclass(frozen=True)
class Jpeg:
    """Stored bytes the device decodes, and the EXIF orientation to apply (1: none)."""

    data: bytes
    orientation: int
    pixels: int  # width x height, from the header


def probe(data: bytes, max_pixels: int) -> Jpeg | None:
    """The bytes as a Jpeg if the device path takes them, from their header alone; else None."""
    if data[:2] != b"\xff\xd8" or data.rstrip(b"\0\r\n")[-2:] != b"\xff\xd9":  # a JPEG that ends
        return None
    try:
        img = open_image(data)  # parses markers up to the first scan; no pixels
        if (
            img.format != "JPEG"  # MPO: decoding.py reads its first picture
            or img.mode not in ("L", "RGB")
            or img.info.get("adobe_transform", 1) != 1  # RGB or YCCK colour, not YCbCr
            or img.width * img.height > max_pixels
        ):
            return None
        orientation = int(img.getexif().get(0x0112, 1))  # read as decoding.py reads it
        return Jpeg(data, orientation, img.width * img.height)
    except Exception:  # noqa: BLE001 - whatever Pillow cannot parse, the CPU path reports
        return None


def upright(image: Any, orientation: int) -> Any:
    """(C, H, W) tensor transposed as ``decoding.UPRIGHT`` transposes a Pillow image."""
    import torch

    if orientation == 2:
        return image.flip(2)
    if orientation == 3:
        return image.flip(1, 2)
    if orientation == 4:
        return image.flip(1)
    if orientation == 5:
        return image.transpose(1, 2)
    if orientation == 6:
        return torch.rot90(image, -1, (1, 2))
    if orientation == 7:
        return image.transpose(1, 2).flip(1, 2)
    if orientation == 8:
        return torch.rot90(image, 1, (1, 2))
    return image


def crop_input(images: Any) -> Any:
    """(N, 3, H, W) uint8 of one size -> (N, 3, 224, 224) float32 in [-1, 1]: the geometry of
    ``preprocess``. Resizing the whole image to the short side 256 and cropping its centre gives
    the same sampling positions and kernel width as Pillow's resize of the crop box alone."""
    import torch

    height, width = images.shape[2:]
    scale = RESIZE_SIZE / min(width, height)
    size = (max(INPUT_SIZE, round(height * scale)), max(INPUT_SIZE, round(width * scale)))
    top, left = (size[0] - INPUT_SIZE) // 2, (size[1] - INPUT_SIZE) // 2
    resized = torch.nn.functional.interpolate(images.float(), size=size, mode="bicubic", antialias=True)
    crop = resized[:, :, top : top + INPUT_SIZE, left : left + INPUT_SIZE]
    return crop.clamp(0, 255).round() / 127.5 - 1.0  # the 8-bit picture preprocess scales


def decode_jpegs(jpegs: list[Jpeg], device: Any) -> tuple[Any, list[int]]:
    """(N, 3, 224, 224) float32 on ``device`` for N Jpegs, and the positions the decoder refused
    (their rows are zeros). Decoded in batches of at most DEVICE_BUDGET_PIXELS; a batch the
    decoder refuses is decoded again one image at a time, so one bad file fails only itself."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    out = torch.zeros((len(jpegs), 3, INPUT_SIZE, INPUT_SIZE), dtype=torch.float32, device=device)
    failed: list[int] = []

    def decode(group: list[int]) -> None:
        encoded = [torch.frombuffer(bytearray(jpegs[i].data), dtype=torch.uint8) for i in group]
        try:
            with warnings.catch_warnings():  # torchvision 0.29 deprecates its codecs for torchcodec's
                warnings.simplefilter("ignore", DeprecationWarning)
                decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            if len(group) > 1:
                for i in group:
                    decode([i])
            else:
                failed.extend(group)
            return
        shapes: dict[tuple[int, ...], list[int]] = {}  # images of one size are resized together
        for k, (i, image) in enumerate(zip(group, decoded, strict=True)):
            decoded[k] = upright(image, jpegs[i].orientation)
            shapes.setdefault(tuple(decoded[k].shape), []).append(k)
        for members in shapes.values():
            rows = torch.as_tensor([group[k] for k in members], device=device)
            out[rows] = crop_input(torch.stack([decoded[k] for k in members]))

    group: list[int] = []
    pixels = 0
    for i, jpeg in enumerate(jpegs):
        if group and pixels + jpeg.pixels > DEVICE_BUDGET_PIXELS:
            decode(group)
            group, pixels = [], 0
        group.append(i)
        pixels += jpeg.pixels
    if group:
        decode(group)
    return out, sorted(failed)


@dataclass(frozen=True)
class DeviceDecoder:
    """The device path of one torch backbone: ``probe`` bytes as they are read (on any thread),
    then ``embed`` a batch (on one thread)."""

    device: Any  # torch.device
    embed_tensor: Callable[[Any], Features]  # the backbone's forward pass on a tensor there
    max_pixels: int

    @classmethod
    def for_backbone(cls, backbone: object, max_pixels: int, device_types: tuple[str, ...] = ("cuda",)) -> DeviceDecoder | None:
        """One for a torch backbone on a device of ``device_types`` (tests add "cpu"); else None."""
        device, embed_tensor = getattr(backbone, "device", None), getattr(backbone, "embed_tensor", None)
        if embed_tensor is None or getattr(device, "type", None) not in device_types:
            return None
        return cls(device, embed_tensor, max_pixels)

    def probe(self, data: bytes) -> Jpeg | None:
        return probe(data, self.max_pixels)

    def embed(self, items: list[np.ndarray | Jpeg], fallback: Callable[[bytes], np.ndarray]) -> Features:
        """Features of a batch whose items are either preprocessed on the CPU already or Jpegs to
        decode on the device; a Jpeg the decoder refuses goes through ``fallback`` (the CPU path:
        bytes to ``preprocess``'s output)."""
        import torch

        jpegs = {k: item for k, item in enumerate(items) if isinstance(item, Jpeg)}
        decoded, failed = decode_jpegs(list(jpegs.values()), self.device)
        batch = torch.empty((len(items), 3, INPUT_SIZE, INPUT_SIZE), dtype=torch.float32, device=self.device)
        if jpegs:
            batch[list(jpegs)] = decoded
        on_cpu = {k: item for k, item in enumerate(items) if isinstance(item, np.ndarray)}
        for k in (list(jpegs)[p] for p in failed):
            on_cpu[k] = fallback(jpegs[k].data)
        if on_cpu:
            rows = sorted(on_cpu)
            batch[rows] = torch.from_numpy(np.stack([on_cpu[k] for k in rows])).to(self.device)
        return self.embed_tensor(batch)
