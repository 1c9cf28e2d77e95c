"""The style prior (``shared/models/style_prior.py``): what ships, what each of its rescalings does,
and that they fold into a head exactly, so that predicting needs nothing new."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.models import style_prior as style_prior_module
from shared.models.backbone import LITE0
from shared.models.heads import normalise_groups, train_head
from shared.models.style_prior import StylePrior, edit_directions, photo_variation, style_prior

SIZES = (LITE0.embedding_size, LITE0.style_size)


@pytest.fixture(scope="module")
def prior() -> StylePrior:
    shipped = style_prior(LITE0.id)
    assert shipped is not None, "no style prior ships for the default backbone"
    return shipped


def test_the_shipped_prior_fits_the_backbone(prior: StylePrior) -> None:
    for rescaling in (prior.photos, prior.edits):
        directions, scales = rescaling.directions, rescaling.scales
        assert directions.shape[0] == LITE0.style_size and scales.shape == (directions.shape[1],)
        np.testing.assert_allclose(directions.T @ directions, np.eye(len(scales)), atol=1e-5)
    assert ((prior.photos.scales > 0) & (prior.photos.scales <= 1)).all()
    assert np.all(np.diff(prior.photos.scales) >= 0)  # the largest variance shrunk most
    assert (prior.edits.scales >= 1).all() and prior.edits.scales.max() > 2  # stretched, some a lot
    assert style_prior("another-backbone") is None


def test_whitening_folds_into_the_weights_and_back(prior: StylePrior) -> None:
    rng = np.random.default_rng(0)
    style, weight = rng.normal(size=(6, LITE0.style_size)), rng.normal(size=LITE0.style_size)
    np.testing.assert_allclose(prior.whiten(style) @ weight, style @ prior.fold(weight), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(prior.unfold(prior.fold(weight)), weight, atol=1e-6)  # float32 directions


def test_whitening_shrinks_the_directions_photos_vary_in() -> None:
    rng = np.random.default_rng(1)
    style = rng.normal(size=(400, 8)) * np.array([10, 1, 1, 1, 1, 1, 1, 1])  # photos differ along axis 0
    whitened = photo_variation(style, components=2, shrinkage=1.0)(style)  # variance floor: the mean, 13.4
    np.testing.assert_allclose(whitened[:, 0].std(), style[:, 0].std() * np.sqrt(13.4 / (100 + 13.4)), rtol=0.1)
    np.testing.assert_allclose(whitened[:, 1:].std(axis=0), style[:, 1:].std(axis=0), rtol=0.2)


def test_the_directions_that_say_what_an_edit_did_are_stretched() -> None:
    """Edits move axis 2 by how strong they are (photos vary along every axis alike): that axis is
    stretched by sqrt(1 + stretch), the axes that say nothing about the edits are left alone."""
    rng = np.random.default_rng(5)
    strength = np.concatenate([np.zeros(2000), rng.uniform(0.5, 1.5, 2000)])
    style = rng.normal(size=(4000, 6))
    style[:, 2] += strength
    never = np.zeros(len(style))  # an effect no edit had: no direction, no NaN
    stretched = edit_directions(style, np.stack([strength, never], axis=1), ridge=0.1, stretch=8.0)
    assert stretched.directions.shape == (6, 1)
    np.testing.assert_allclose(np.abs(stretched.directions[:, 0]), np.eye(6)[2], atol=0.1)
    np.testing.assert_allclose(stretched.scales, [3.0])
    np.testing.assert_allclose(stretched(np.eye(6)[[0, 2]]) @ np.eye(6)[[0, 2]].T, [[1, 0], [0, 3]], atol=0.05)


def test_a_prior_made_before_the_edit_directions_whitens_as_it_did(
    prior: StylePrior, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    np.savez(tmp_path / "earlier.npz", spec=np.array("earlier"), directions=prior.photos.directions,
             scales=prior.photos.scales)
    monkeypatch.setattr(style_prior_module, "PRIORS", tmp_path)
    earlier = style_prior("earlier")
    assert earlier is not None
    style = np.random.default_rng(6).normal(size=(3, LITE0.style_size))
    np.testing.assert_allclose(earlier.whiten(style), prior.photos(style))


def test_a_head_trained_with_the_prior_scores_raw_features(prior: StylePrior) -> None:
    """The head comes back folded: its scores over the normalised (unwhitened) features are those of
    the fit over whitened ones, and fine-tuning from it reaches the same optimum as a fresh fit."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(24, sum(SIZES))).astype(np.float32)
    x[:12, SIZES[0] : SIZES[0] + 30] += 0.8
    y = np.array([1] * 12 + [0] * 12)
    trained = train_head(x, y, SIZES, forms=("style",), seed=3, prior=prior)
    z = normalise_groups(x, SIZES)
    whitened = z.copy()
    whitened[:, SIZES[0] :] = prior.whiten(z[:, SIZES[0] :])
    unfolded = prior.unfold(trained.head.weight[SIZES[0] :].astype(np.float64))
    np.testing.assert_allclose(z @ trained.head.weight.astype(np.float64), whitened[:, SIZES[0] :] @ unfolded,
                               rtol=1e-4, atol=1e-4)
    again = train_head(x, y, SIZES, forms=("style",), seed=3, prior=prior, previous=trained.head)
    np.testing.assert_allclose(again.head.weight, trained.head.weight, atol=0.02)
    plain = train_head(x, y, SIZES, forms=("style",), seed=3)
    assert not np.allclose(plain.head.weight, trained.head.weight, atol=0.02)  # the prior changes the fit


def test_only_the_style_form_sees_the_prior(prior: StylePrior) -> None:
    """Semantic and both heads are what they are without it: keyword tags keep their heads."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(20, sum(SIZES))).astype(np.float32)
    x[:10, :30] += 0.8
    y = np.array([1] * 10 + [0] * 10)
    for forms in (("semantic",), ("both",)):
        with_prior, without = train_head(x, y, SIZES, forms=forms, seed=1, prior=prior), train_head(x, y, SIZES, forms=forms, seed=1)
        assert with_prior.head.weight.tobytes() == without.head.weight.tobytes() and with_prior.metrics == without.metrics
