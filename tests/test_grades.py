"""The grade statistics and the shipped grade head, on real photos and graded copies."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bench.photos import low_key, teal_orange, vignette
from shared.models.backbone import preprocess_batch
from shared.models.backbone.grades import GRADE_PARAMETERS, STATISTICS, grade_statistics, load_grade_head
from shared.models.backbone.spec import GRADE_SIZE
from tests.support.photos import photo

PHOTOS = ("chelsea", "coffee", "astronaut")


@pytest.fixture(scope="module")
def head() -> torch.nn.Module:
    return load_grade_head()


def estimates(head: torch.nn.Module, images: list[Image.Image]) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        out = head(torch.from_numpy(preprocess_batch(images))).numpy()
    return {name: out[:, i] for i, name in enumerate(GRADE_PARAMETERS)}


def test_statistics_are_finite_and_continuous_on_flat_and_extreme_images() -> None:
    flat = [Image.new("RGB", (256, 256), colour) for colour in ((0, 0, 0), (255, 255, 255), (128, 0, 255))]
    stats = grade_statistics(torch.from_numpy(preprocess_batch(flat)))
    assert stats.shape == (3, STATISTICS) and torch.isfinite(stats).all()
    assert len(GRADE_PARAMETERS) == GRADE_SIZE


def test_vignette_lowers_the_corners_against_the_centre() -> None:
    images = [photo(name) for name in PHOTOS]
    plain = grade_statistics(torch.from_numpy(preprocess_batch(images)))
    darker = grade_statistics(torch.from_numpy(preprocess_batch([vignette(im) for im in images])))
    corners = 24 + 2 + 5 + 2 + 2  # the log fall-off of the outermost ring, after the bands and moments
    assert (darker[:, corners] < plain[:, corners] - 0.3).all()


def test_the_head_reports_grades_it_never_saw_on_photos_it_never_saw(head: torch.nn.Module) -> None:
    """Chelsea is one of bench.quality's evaluation photos, which the head was not trained on."""
    images = [photo(name) for name in PHOTOS]
    plain = estimates(head, images)
    assert (estimates(head, [vignette(im) for im in images])["vignette"] > plain["vignette"] + 0.5).all()
    assert (estimates(head, [low_key(im) for im in images])["gamma"] > plain["gamma"] + 0.5).all()
    toned = estimates(head, [teal_orange(im) for im in images])  # bluer shadows, redder highlights
    assert (toned["shadow_cb"] > plain["shadow_cb"]).all() and (toned["light_cr"] > plain["light_cr"]).all()
    grey = estimates(head, [im.convert("L").convert("RGB") for im in images])
    assert (grey["sat"] < plain["sat"] - 1).all()
