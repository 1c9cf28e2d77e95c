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
