"""Colour-grade features: what a grade did to the picture, in a dozen numbers, inside the forward pass.

The style statistics of early blocks (``lite0``) describe texture well (grain, blur, pixelation)
but mix a grade with the photo's own colours: a linear head on five examples could not tell teal
shadows from a photo of leaves (bench.quality, 5+5: vignette 0.885, teal and orange 0.746). Two
steps, both torch ops on the (N, 3, 224, 224) input, so they land in the ONNX export, OpenVINO and
the CUDA worker alike:

1. ``grade_statistics``: 50 pixel statistics on 56 x 56 and 28 x 28 average-pooled copies — a
   soft luma histogram, opponent chroma (B−Y, R−Y) and saturation in five luma bands (shadows … highlights),
   luma–chroma slopes, luma and chroma moments, luma and chroma in four rings from the centre
   relative to the centre, and local contrast at two scales. Memberships are triangular (continuous), so a pixel
   near a band edge cannot flip a feature between runtimes.
2. ``GradeHead``: a 50-64-64-12 MLP trained offline (``tools/train_grade_head.py``, self-supervised)
   to predict the parameters of random grades — gamma, contrast, black and white points,
   saturation, shadow, highlight and global tints, vignette — applied to crops of bench.quality's
   five *training* photos under nuisances (the photo's own colours rotated, blur, noise,
   pixelation). Its 12 outputs say "how much of which grade" roughly independently of the photo,
   which is what a head on five examples needs; its weights ship with the code (``grade_head.safetensors``,
   about 30 KB).

Used raw (standardised) in the style group, the 50 statistics *lowered* bench.quality's style
mean at 5+5 (13 tags, 5 draws: 0.922 → 0.871 with half the group's length, 0.843 alone): their
spread over photos drowned the grade. The head's 12 outputs carry ``spec.GRADE_SHARE`` of the
group's length instead. Cost: about 3-6 ms of one core for a batch of 8 in OpenVINO (the backbone
takes about 150 ms), most of it reading the input once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
TONE_BANDS = 5  # luma bands for chroma and saturation: shadows, lower mids, mids, upper mids, highlights
HISTOGRAM_BINS = 9
RINGS = 4  # centre, two middle rings, corners
EMPTY_BAND = 0.02  # a band's mass added to its denominator: an almost empty band gives ~0, not noise
STATISTICS = 2 * TONE_BANDS + TONE_BANDS + HISTOGRAM_BINS + 2 + 5 + 2 + (RINGS - 1) + 2 * RINGS + (RINGS - 1) + 3
GRADE_PARAMETERS = ("contrast", "gain", "gamma", "lift", "light_cb", "light_cr", "sat", "shadow_cb", "shadow_cr",
                    "tint_cb", "tint_cr", "vignette")
HIDDEN = 64
WEIGHTS = Path(__file__).with_name("grade_head.safetensors")


def _hats(v: Any, count: int) -> Any:
    """(...) in [0, 1] -> (count, ...) triangular memberships centred on 0, 1/(count-1), ..., 1; they sum to 1."""
    import torch

    centres = torch.linspace(0, 1, count).reshape(count, *([1] * v.dim()))
    return (1 - (v.unsqueeze(0) - centres).abs() * (count - 1)).clamp_min(0)


def _band_means(weights: Any, values: Any, share: Any) -> Any:
    """(K, N, P) memberships, (N, P) values -> (N, K) means of each band, shrunk to 0 when empty."""
    return (weights * values).mean(dim=2).T / (share + EMPTY_BAND)


def _local_contrast(luma: Any, size: int) -> Any:
    """(N, H, W) -> (N,): mean |luma - its mean over the size x size window around it|."""
    import torch.nn.functional as F

    inner = size // 2
    return (luma[:, inner:-inner, inner:-inner] - F.avg_pool2d(luma[:, None], size, 1)[:, 0]).abs().mean(dim=(1, 2))


def _luma(rgb: Any) -> Any:
    return LUMA_WEIGHTS[0] * rgb[:, 0] + LUMA_WEIGHTS[1] * rgb[:, 1] + LUMA_WEIGHTS[2] * rgb[:, 2]


def _ring_matrix(side: int, dtype: Any, device: Any) -> Any:
    """(side * side, RINGS): each pixel's ring memberships divided by the ring's area (a constant)."""
    import torch

    u = (torch.arange(side, dtype=dtype, device=device) + 0.5) / side * 2 - 1
    radius = ((u[:, None] ** 2 + u[None, :] ** 2) / 2).sqrt().reshape(-1)  # 0 at the centre, 1 in the corners
    rings = _hats(radius, RINGS).T
    return rings / rings.sum(dim=0)


def grade_statistics(batch: Any) -> Any:
    """(N, 3, 224, 224) in [-1, 1] -> (N, STATISTICS): tone, colour by tone, radial profile, contrast.

    The input is read once (a 4 x 4 average, 56 x 56); tone and colour come from a 28 x 28 copy.
    About 3 ms of one core for 8 images in OpenVINO, most of it that first read."""
    import torch
    import torch.nn.functional as F

    quarter = (F.avg_pool2d(batch, 4) + 1) / 2  # (N, 3, 56, 56) in [0, 1]
    small = F.avg_pool2d(quarter, 2)  # (N, 3, 28, 28)
    n, side = small.shape[0], small.shape[-1]
    luma_image = _luma(small)
    luma = luma_image.reshape(n, -1)
    cb, cr = small[:, 2].reshape(n, -1) - luma, small[:, 0].reshape(n, -1) - luma
    saturation = (cb * cb + cr * cr + 1e-6).sqrt()

    bands = _hats(luma.clamp(0, 1), TONE_BANDS)  # (K, N, P)
    share = bands.mean(dim=2).T
    histogram = _hats(luma.clamp(0, 1), HISTOGRAM_BINS).mean(dim=2).T

    mean_luma, std_luma = luma.mean(dim=1), luma.std(dim=1)
    mean_cb, mean_cr = cb.mean(dim=1), cr.mean(dim=1)
    centred = luma - mean_luma[:, None]
    variance = (centred * centred).mean(dim=1) + 1e-4
    slope_cb = (centred * (cb - mean_cb[:, None])).mean(dim=1) / variance
    slope_cr = (centred * (cr - mean_cr[:, None])).mean(dim=1) / variance

    rings = _ring_matrix(side, batch.dtype, batch.device)
    ring_luma, ring_cb, ring_cr, ring_saturation = (v @ rings for v in (luma, cb, cr, saturation))
    fine, coarse = _local_contrast(_luma(quarter), 3), _local_contrast(luma_image, 3)
    return torch.cat(
        [
            _band_means(bands, cb, share),
            _band_means(bands, cr, share),
            _band_means(bands, saturation, share),
            histogram,
            torch.stack([mean_luma, std_luma], 1),
            torch.stack([mean_cb, mean_cr, cb.std(dim=1), cr.std(dim=1), saturation.mean(dim=1)], 1),
            torch.stack([slope_cb, slope_cr], 1),
            torch.log((ring_luma[:, 1:] + 0.02) / (ring_luma[:, :1] + 0.02)),  # vignette: fall-off from the centre
            torch.cat([ring_cb - mean_cb[:, None], ring_cr - mean_cr[:, None]], 1),
            torch.log((ring_saturation[:, 1:] + 0.02) / (ring_saturation[:, :1] + 0.02)),
            torch.stack([fine, coarse, std_luma / (mean_luma + 0.05)], 1),
        ],
        dim=1,
    )


def grade_head_module() -> Any:
    """The untrained MLP: standardise the statistics, two GELU layers, the 12 grade parameters."""
    import torch

    class GradeHead(torch.nn.Module):  # type: ignore[misc]  # torch is Any to mypy (not followed)
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.zeros(STATISTICS))
            self.register_buffer("scale", torch.ones(STATISTICS))
            self.net = torch.nn.Sequential(
                torch.nn.Linear(STATISTICS, HIDDEN), torch.nn.GELU(),
                torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.GELU(),
                torch.nn.Linear(HIDDEN, len(GRADE_PARAMETERS)),
            )

        def forward(self, batch: Any) -> Any:
            return self.net((grade_statistics(batch) - self.mean) / self.scale)

    return GradeHead()


def load_grade_head(device: Any = "cpu") -> Any:
    """The shipped head (eval mode) on ``device``."""
    from safetensors.torch import load_file

    head = grade_head_module()
    head.load_state_dict(load_file(str(WEIGHTS)))
    return head.eval().to(device)
