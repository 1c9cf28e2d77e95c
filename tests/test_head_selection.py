"""How a head's cross-validation is drawn and read (``shared/models/heads.py``), on synthetic
features: the examples it got wrong are those matching gets wrong at the tuned threshold, and its
shuffles follow the seed it is given."""

from __future__ import annotations

import numpy as np

from shared.models.backbone import LITE0
from shared.models.heads import (
    MOST_WRONG,
    Head,
    HeadMatrix,
    choose_form,
    normalise_groups,
    sigmoid,
    train_head,
    wrong_side,
)

SIZES = (LITE0.embedding_size, LITE0.style_size)


def synthetic(n_pos: int, n_neg: int, seed: int, shift: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping classes: positives shifted along a few semantic and style features."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_pos + n_neg, sum(SIZES))).astype(np.float32)
    x[:n_pos, :40] += shift
    x[:n_pos, SIZES[0] : SIZES[0] + 40] += shift
    return x, np.array([1] * n_pos + [0] * n_neg)


def test_wrong_side_is_matching_at_the_threshold() -> None:
    y = np.array([1, 1, 0, 0, 0, 1])
    s = np.array([0.9, 0.55, 0.58, 0.78, 0.8, 0.81])
    # At 0.8 a positive at 0.55 is missed and a negative at 0.8 matches; 0.58 and 0.78 do not.
    assert wrong_side(y, s, 0.8) == [1, 4]
    assert wrong_side(y, s, 0.5) == [4, 3, 2]  # at 0.5: the negatives over it, the furthest first
    assert wrong_side(y, s, 0.8, limit=1) == [1]


def test_most_wrong_agrees_with_the_metrics_at_the_tuned_threshold() -> None:
    thresholds = set()
    for seed in range(6):
        x, y = synthetic(12, 12, seed)
        trained = train_head(x, y, SIZES, seed=seed)
        metrics, threshold = trained.metrics, trained.threshold
        thresholds.add(threshold)
        wrong = dict(trained.most_wrong)
        for i, score in wrong.items():
            assert (score < threshold) if y[i] == 1 else (score >= threshold), (seed, i, score, threshold)
        # every held-out mistake at the threshold is listed (up to 10), and nothing else
        mistakes = round((1 - metrics["accuracy"]) * metrics["cv_examples"])
        assert len(wrong) == min(mistakes, MOST_WRONG), (seed, wrong, metrics)
        if metrics["precision"] == metrics["recall"] == 1.0:
            assert not wrong
    assert thresholds - {0.5}, thresholds  # the draws tune thresholds other than 0.5


def test_the_seed_draws_the_folds_and_nothing_else_does() -> None:
    x, y = synthetic(8, 8, 0, shift=0.2)
    a, b = train_head(x, y, SIZES, seed=11), train_head(x, y, SIZES, seed=11)
    assert a.head.weight.tobytes() == b.head.weight.tobytes() and a.metrics == b.metrics
    assert a.most_wrong == b.most_wrong and a.threshold == b.threshold


def test_the_semantic_form_is_kept_unless_another_is_clearly_better() -> None:
    """With five examples a class, `both` won cross-validation by a hair on subject tags and
    generalised worse; a look's style form wins by far more, and near chance no form is favoured."""
    def losses(semantic: float, other: float, form: str = "both") -> dict[tuple[str, float], float]:
        return {("semantic", 0.1): semantic, ("semantic", 1.0): semantic + 0.1, (form, 0.1): other, (form, 1.0): 0.69}

    assert choose_form(losses(0.20, 0.17)) == ("semantic", 0.1)  # a hair better: keep semantic
    assert choose_form(losses(0.106, 0.040, "style")) == ("semantic", 0.1)  # better, by chance (a cat at 5+5)
    assert choose_form(losses(0.20, 0.06)) == ("both", 0.1)  # under a third of it: clearly better
    assert choose_form(losses(0.026, 0.001, "style")) == ("style", 0.1)  # near-perfect fits alike
    assert choose_form(losses(0.026, 0.016, "style")) == ("semantic", 0.1)
    assert choose_form(losses(0.51, 0.47)) == ("both", 0.1)  # semantic near chance: the lowest wins
    assert choose_form(losses(0.30, 0.31)) == ("semantic", 0.1)
    assert choose_form({("style", 0.1): 0.2, ("both", 0.1): 0.3}) == ("style", 0.1)  # no semantic form asked


def test_the_head_matrix_scores_every_tag_as_its_own_head_does() -> None:
    """Heads are stacked a block of 256 at a time (one transposing copy of thousands was slow):
    600 heads cross block boundaries, and one matrix multiply still gives each head's own score."""
    rng = np.random.default_rng(7)
    heads = [Head(rng.normal(size=sum(SIZES)).astype(np.float32), float(rng.normal())) for _ in range(600)]
    matrix = HeadMatrix([f"t{i}" for i in range(600)], heads, [0.5] * 600, [1] * 600, SIZES)
    x = rng.normal(size=(3, sum(SIZES))).astype(np.float32)
    z = normalise_groups(x, SIZES)
    expected = sigmoid(np.stack([z @ h.weight.astype(np.float64) + h.bias for h in heads], axis=1))
    assert np.allclose(matrix.scores(x), expected, atol=1e-5)
    assert np.array_equal(matrix.select(["t300", "t5"]).columns, np.stack([heads[300].weight, heads[5].weight], axis=1))
    assert HeadMatrix([], [], [], [], SIZES).scores(x).shape == (3, 0)
