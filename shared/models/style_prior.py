"""How the style embedding varies between ordinary photos, so that few-shot heads can look past it.

A style tag's five positives and five negatives are different photos: most of what separates
them in the style embedding (channel means, spreads and colour correlations of the early blocks)
is the photos' own light and colour, not the look being taught. Linear discriminant analysis
would weigh the difference of the class means by the inverse of the within-class covariance;
ten examples cannot estimate that covariance, but unlabelled photos can. The prior is the
covariance of the normalised style embedding over random crops of ordinary photos
(``tools/make_style_prior.py`` says which), kept as its leading eigenvectors ``directions`` and,
per direction, the factor ``scales`` whitening multiplies it by.

The ``style`` form of a head is fitted on whitened style features: along each leading direction
the features are scaled by sqrt(s / (variance + s)) (s: ``shrinkage`` times the mean variance),
elsewhere left as they are, so that the L2 penalty makes directions in which photos differ a lot
expensive and the rest cheap. The scaling is linear and symmetric, so it folds into the head's
weights (``fold``): a head stays one row over the normalised groups and predicting is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

PRIORS = Path(__file__).resolve().parent / "style_priors"


@dataclass(frozen=True)
class StylePrior:
    spec: str  # the backbone spec whose style embedding it describes
    directions: np.ndarray  # (style_size, k) orthonormal columns, largest variance first
    scales: np.ndarray  # (k,) in (0, 1]: what whitening multiplies each direction by

    def whiten(self, style: np.ndarray) -> np.ndarray:
        """Normalised style features (N, style_size) -> whitened ones (the same shape)."""
        along = style @ self.directions
        whitened: np.ndarray = style + (along * (self.scales - 1.0)) @ self.directions.T
        return whitened

    def fold(self, weight: np.ndarray) -> np.ndarray:
        """A head's weights over whitened style features -> the same head over unwhitened ones."""
        folded: np.ndarray = self.whiten(weight[None])[0]
        return folded

    def unfold(self, weight: np.ndarray) -> np.ndarray:
        """Inverse of ``fold``: weights over unwhitened style features -> over whitened ones
        (to fine-tune from a previous head)."""
        along = weight @ self.directions
        unfolded: np.ndarray = weight + (along * (1.0 / self.scales - 1.0)) @ self.directions.T
        return unfolded


def build(spec: str, style: np.ndarray, components: int, shrinkage: float) -> StylePrior:
    """The prior of normalised style features ``style`` (N, style_size) of ordinary photos."""
    centred = style - style.mean(axis=0)
    covariance = centred.T @ centred / len(style)
    variances, vectors = np.linalg.eigh(covariance)
    order = np.argsort(variances)[::-1][:components]
    floor = shrinkage * float(np.trace(covariance)) / covariance.shape[0]
    scales = np.sqrt(floor / (variances[order] + floor))
    return StylePrior(spec, vectors[:, order].astype(np.float64), scales.astype(np.float64))


def save(prior: StylePrior, path: Path) -> None:
    np.savez_compressed(path, spec=np.array(prior.spec), directions=prior.directions.astype(np.float32),
                        scales=prior.scales.astype(np.float32))


@cache
def style_prior(spec: str) -> StylePrior | None:
    """The shipped prior of backbone spec ``spec``; None for a backbone without one (heads are then
    fitted on the normalised features as they are)."""
    path = PRIORS / f"{spec}.npz"
    if not path.exists():
        return None
    with np.load(path) as saved:
        if str(saved["spec"]) != spec:
            raise ValueError(f"{path} describes backbone {saved['spec']}, not {spec}")
        return StylePrior(spec, saved["directions"].astype(np.float64), saved["scales"].astype(np.float64))
