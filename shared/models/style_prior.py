"""How the style embedding varies between ordinary photos, and how edits move it, so that few-shot
heads can look past the one and towards the other.

A style tag's five positives and five negatives are different photos: most of what separates
them in the style embedding (channel means, spreads and colour correlations of the early blocks)
is the photos' own light and colour, not the look being taught. Linear discriminant analysis
would weigh the difference of the class means by the inverse of the within-class covariance;
ten examples cannot estimate that covariance, but unlabelled photos can. The prior holds two
linear rescalings of the normalised style embedding, both learnt offline from random crops of
ordinary photos (``tools/make_style_prior.py`` says which):

- ``photos``: the covariance of the crops, kept as its leading eigenvectors; along each, the
  features are scaled by sqrt(s / (variance + s)) (s: ``shrinkage`` times the mean variance), so
  that the L2 penalty makes directions in which photos differ a lot expensive;
- ``edits``: the same crops edited at random (the kinds of edit photo editors offer, random
  strengths and hues: ``tools/photo_edits.py``); a ridge regression from the whitened features to
  what each edit did (which kind, and how it moved simple pixel statistics) gives directions that
  tell edits apart whatever the photo, and along those the features are stretched
  (sqrt(1 + ``stretch`` × the regression directions' spectrum)), so that they are cheap.

The ``style`` form of a head is fitted on the rescaled style features. The rescalings are linear,
so they fold into the head's weights (``fold``): a head stays one row over the normalised groups
and predicting is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from shared.core.npy import load_every_array

PRIORS = Path(__file__).resolve().parent / "style_priors"


@dataclass(frozen=True)
class Rescaling:
    """Scales each of k orthonormal directions by its factor and leaves the rest: linear, symmetric."""

    directions: np.ndarray  # (style_size, k) orthonormal columns
    scales: np.ndarray  # (k,) positive: what each direction is multiplied by

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Rows (or one vector) of style features, rescaled."""
        scaled: np.ndarray = x + ((x @ self.directions) * (self.scales - 1.0)) @ self.directions.T
        return scaled

    def inverse(self, x: np.ndarray) -> np.ndarray:
        restored: np.ndarray = x + ((x @ self.directions) * (1.0 / self.scales - 1.0)) @ self.directions.T
        return restored


@dataclass(frozen=True)
class StylePrior:
    spec: str  # the backbone spec whose style embedding it describes
    photos: Rescaling  # shrinks the directions ordinary photos differ in, largest variance first
    edits: Rescaling  # stretches the directions that tell edits apart

    def whiten(self, style: np.ndarray) -> np.ndarray:
        """Normalised style features (N, style_size) -> what the style form is fitted on (same shape)."""
        return self.edits(self.photos(style))

    def fold(self, weight: np.ndarray) -> np.ndarray:
        """A head's weights over whitened style features -> the same head over unwhitened ones."""
        return self.photos(self.edits(weight))

    def unfold(self, weight: np.ndarray) -> np.ndarray:
        """Inverse of ``fold``: weights over unwhitened style features -> over whitened ones
        (to fine-tune from a previous head)."""
        return self.edits.inverse(self.photos.inverse(weight))


def photo_variation(style: np.ndarray, components: int, shrinkage: float) -> Rescaling:
    """What makes the directions normalised style features ``style`` (N, style_size) of ordinary
    photos vary in expensive: their ``components`` leading eigenvectors, shrunk."""
    centred = style - style.mean(axis=0)
    covariance = centred.T @ centred / len(style)
    variances, vectors = np.linalg.eigh(covariance)
    order = np.argsort(variances)[::-1][:components]
    floor = shrinkage * float(np.trace(covariance)) / covariance.shape[0]
    scales = np.sqrt(floor / (variances[order] + floor))
    return Rescaling(vectors[:, order].astype(np.float64), scales.astype(np.float64))


def edit_directions(whitened: np.ndarray, effects: np.ndarray, ridge: float, stretch: float) -> Rescaling:
    """What makes the directions that tell edits apart cheap: ``whitened`` (N, style_size) are
    photo-whitened style features of plain and edited crops, ``effects`` (N, m) what was done to
    each (0 for the plain ones). The ridge regression's coefficient columns (``ridge`` times the
    mean variance added to the diagonal), at unit length, span the directions; the features are
    stretched by sqrt(1 + stretch × their spectrum)."""
    x, y = whitened - whitened.mean(axis=0), effects - effects.mean(axis=0)
    gram = x.T @ x / len(x)
    penalty = ridge * float(np.trace(gram)) / gram.shape[0]
    coefficients = np.linalg.solve(gram + penalty * np.eye(gram.shape[0]), x.T @ y / len(x))
    norms = np.linalg.norm(coefficients, axis=0)
    coefficients = coefficients[:, norms > 1e-12] / norms[norms > 1e-12]  # an effect no edit had says nothing
    vectors, singular, _ = np.linalg.svd(coefficients, full_matrices=False)
    return Rescaling(vectors.astype(np.float64), np.sqrt(1.0 + stretch * singular**2).astype(np.float64))


def save(prior: StylePrior, path: Path) -> None:
    np.savez_compressed(path, spec=np.array(prior.spec),
                        directions=prior.photos.directions.astype(np.float32), scales=prior.photos.scales.astype(np.float32),
                        edit_directions=prior.edits.directions.astype(np.float32),
                        edit_scales=prior.edits.scales.astype(np.float32))


@cache
def style_prior(spec: str) -> StylePrior | None:
    """The shipped prior of backbone spec ``spec``; None for a backbone without one (heads are then
    fitted on the normalised features as they are)."""
    path = PRIORS / f"{spec}.npz"
    if not path.exists():
        return None
    saved = load_every_array(path.read_bytes())  # a training thread may be first to ask
    if str(saved["spec"]) != spec:
        raise ValueError(f"{path} describes backbone {saved['spec']}, not {spec}")
    loaded = {name: array.astype(np.float64) for name, array in saved.items() if name != "spec"}
    photos = Rescaling(loaded["directions"], loaded["scales"])
    if "edit_directions" not in loaded:  # a prior made before the edit directions: photo whitening only
        return StylePrior(spec, photos, Rescaling(np.zeros((len(photos.directions), 0)), np.zeros(0)))
    return StylePrior(spec, photos, Rescaling(loaded["edit_directions"], loaded["edit_scales"]))
