"""What every backbone is: the features one forward pass gives, the spec heads and archives depend
on, the small protocol every runtime satisfies, and the numerical contract (float32)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Features:
    """What one forward pass gives for a batch of N images."""

    embeddings: np.ndarray  # (N, embedding_size) float32, the pooled vector: what is in the picture
    styles: np.ndarray  # (N, style_size) float32, statistics of early blocks and grade estimates: how it looks
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


# The style embedding has two parts. Texture, from the stem (32 channels) and blocks 0-3 (16, 24,
# 40, 80 channels): per-channel mean and std (the classic style statistics), per-channel
# centre-minus-border mean (vignettes, framing), and the correlations between the stem's channels;
# scaled to length sqrt(1 - GRADE_SHARE). Then the grade head's 12 estimates (``grades``: tone
# curve, saturation, split toning, tint, vignette), scaled by sqrt(GRADE_SHARE / 12), so that they
# carry about GRADE_SHARE of the style group's squared length (heads normalise the group as a whole).
# Measured with bench.quality (its 13 style and grade tags, 5+5, 5 draws, an earlier training of
# the same head): mean AUC 0.922 without the estimates; with them 0.944 at a share of 0.1, 0.941
# at 0.15, 0.934 at 0.25, 0.924 at 0.4 (texture tags such as grain and soft focus lose as it grows,
# vignette, sepia, faded and low key gain at any share).
STYLE_BLOCKS = (0, 1, 2, 3)
_STYLE_CHANNELS = 32 + 16 + 24 + 40 + 80
TEXTURE_SIZE = 3 * _STYLE_CHANNELS + 32 * 31 // 2
GRADE_SIZE = 12
GRADE_SHARE = 0.15
# v2: the grade estimates appended and the texture part scaled (v1: texture only, unscaled). The id
# names the layout: cached embeddings, library packs and archives of v1 are never mixed with v2.
LITE0 = BackboneSpec(
    id="efficientnet-lite0-in1k-v2",
    embedding_size=1280,
    style_size=TEXTURE_SIZE + GRADE_SIZE,
)


# The served numerical contract: every runtime computes the backbone in IEEE float32, so that heads
# trained on one machine's embeddings score the same on any other (see ``exported`` and ``lite0``).
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

    def lane(self) -> Backbone | None:
        """A single-threaded copy on the same runtime, for one of several threads that each run
        whole forward passes side by side (``shared.web.batching``); None where the runtime
        spreads one pass over the device itself (torch)."""
        ...
