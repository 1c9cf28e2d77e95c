"""Custom heads: class-balanced, L2-regularised logistic regression on normalised embeddings.

A head sees two groups of features from the same forward pass: the semantic embedding (what is
in the picture) and the style embedding (how it looks). Each group is normalised on its own
(unit length times sqrt of its size). Per tag, cross-validation chooses the form — semantic
only, style only, or both; semantic unless another is clearly better (``SEMANTIC_SHARE``) —
together with the L2 strength, and the decision threshold, and reports held-out metrics.
Retraining starts the optimiser from the previous head (fine-tuning). Whatever the form, a
head is one row over the normalised groups, so at predict time all heads are one matrix
(``HeadMatrix``): one multiply scores every tag. With a style prior (``shared/models/style_prior.py``)
the ``style`` form sees the style group rescaled (the directions photos differ in shrunk, those
that tell edits apart stretched), and its head is folded back.

Presumed negatives: a tag with positive examples only is trained against unlabelled images that
stand in for negatives (``train_head(..., presumed_negatives=True)``; which images,
``shared/domain/training.py`` decides). Some of them may be unlabelled positives, so they weigh
less: the weights stay class-balanced, but the presumed-negative class as a whole weighs
``PRESUMED_NEGATIVE_WEIGHT`` times the positive class (a biased, cost-sensitive fit, as PU
learning's biased SVM does), in every fit and in the held-out log loss that chooses the form and
L2 strength. Cross-validation keeps every positive (up to half of its sample). The threshold is
the one with the best F1 when the presumed negatives count, all together, as much as the
positives: how many of them there are is the trainer's choice, and with bench.quality's photos (2
draws per tag, 5-20 positives) plain F1 against 200 of them chose thresholds that kept 0.40-0.79 of
the held-out positives, balanced F1 0.62-0.92 (precision 0.82-0.98; real negatives: 0.87-0.94). The metrics are measured against the presumed negatives:
an unlabelled positive scored high counts as a false positive, so precision, accuracy and ROC AUC
are what unlabelled images show, not real negatives (recall is measured on real positives). The
metrics say so (``presumed_negatives``, ``note``).

The weight was measured with bench.quality's photos (2 draws per tag): with 5, 10 and 20 positives
and 200 presumed negatives, weights of 1, 0.5 and 0.25 gave mean held-out ROC AUC within 0.01 of
each other, none best throughout (as expected: it mostly moves the bias, which the threshold
follows). 0.5 is kept: it leaves the scores of unlabelled look-alikes a little higher, as a share
of them are positives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import minimize

from shared.models.style_prior import StylePrior

L2 = 1e-3  # with too few examples to cross-validate
# L2 strengths cross-validation chooses from, jointly with the form. Near-hard-margin fits (1e-3)
# make overconfident held-out scores with 5-20 examples a class, so the log loss that compares
# forms is noisy; stronger penalties are better calibrated and often generalise better.
L2_GRID = (1e-3, 1e-1, 1.0)
MAX_FOLDS = 5
# Cross-validate on a stratified sample of at most this many (fit on all): 3 forms x 3 L2
# strengths x 5 folds keep training 1000 examples well under 2 s.
MAX_CV_EXAMPLES = 120
# Held-out scores only rank forms and strengths: near-hard-margin fits stop early, warm-started
# along the path from the strongest penalty (the final head is fitted to convergence).
CV_ITERATIONS = 100
# One k-fold split of a few examples decides by which example happens to be held out with which:
# with bench.quality's photos at 5+5 (15 tags, 10 draws each), four seeds of one 5-fold split chose
# different forms or L2 strengths in 42% of the draws, with held-out AUC up to 0.45 apart. So
# cross-validation averages the held-out log loss over CV_SHUFFLES shuffles of the k folds (seeded
# from the training's seed), fewer for large samples (about CV_SHUFFLE_BUDGET held-out predictions
# per candidate in all). Averaging two shuffles already cut 42% to 29% (disjoint pairs of seeds); the
# mean AUC over the draws is what one split gave (0.931-0.937 style, 0.957-0.960 keyword at 5+5).
# Leave-one-out (nothing to draw) had the same means but lost 'cat' at 5+5 (0.956 against 0.974,
# worst draw 0.823 against 0.913), so it is not used.
CV_SHUFFLES = 5
CV_SHUFFLE_BUDGET = 240
MOST_WRONG = 10
# The presumed-negative class's total weight against the positive class's (real negatives: 1).
PRESUMED_NEGATIVE_WEIGHT = 0.5
PRESUMED_NOTE = (
    "No negative examples: unlabelled stored images stood in as presumed negatives. Precision, accuracy and "
    "ROC AUC are measured against those unlabelled images, some of which may be unlabelled positives."
)
# Form name -> weight of (semantic, style) group in the head's input.
FORMS: dict[str, tuple[float, float]] = {"semantic": (1.0, 0.0), "style": (0.0, 1.0), "both": (1.0, 1.0)}
# The semantic form is kept unless another cuts its held-out log loss to this share of it (a look's
# style form wins by far more: 0.001 against 0.026 for sepia copies of the same photos). A subject
# tag (a cat, a rocket) gains nothing from the style group, but with five examples a class `both`
# or `style` sometimes won cross-validation by chance and generalised worse: bench.quality at 5+5
# (10 draws) gave keyword tags 0.980 against 0.985 for semantic-only heads (worst draw 0.844). A
# first rule (beat it by 0.05, or halve it) gave 0.984 (worst 0.910); once the style prior's edit
# directions made the style form stronger it let that form win two keyword draws at 5+5 (cat 0.040
# against 0.106, coffee 0.096 against 0.218; held-out AUC 0.814 and 0.701), 0.980 in all. A third:
# 0.985 (worst 0.910), and every style and grade tag as with the first rule but soft focus (1.000 ->
# 0.997 at 5+5).
SEMANTIC_SHARE = 1 / 3
# ... only where the semantic form explains the tag at all (held-out log loss under half of a coin's,
# ln 2 / 2): where every form is near chance (teal and orange on ordinary photos: 0.51-0.66), which
# one is lowest is what little there is to go on (with the first rule there too: 0.709 -> 0.680).
SEMANTIC_EXPLAINS = 0.5 * math.log(2)


@dataclass(frozen=True)
class Head:
    weight: np.ndarray  # (D,) float32 over the normalised feature groups
    bias: float


@dataclass(frozen=True)
class TrainedHead:
    head: Head
    threshold: float
    form: str
    metrics: dict[str, Any]
    # (index into the training examples, held-out score), the examples cross-validation got most
    # wrong first: positives scored lowest and negatives highest, those on the wrong side of the
    # tuned threshold (positives below it, negatives at or above it: what matching would do).
    most_wrong: list[tuple[int, float]] = field(default_factory=list)


def normalise(x: np.ndarray) -> np.ndarray:
    """Scale each row to unit length times sqrt(width), so features are O(1) whatever the width."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    scaled: np.ndarray = x / np.maximum(norms, 1e-12) * np.sqrt(x.shape[-1])
    return scaled


def normalise_groups(features: np.ndarray, sizes: tuple[int, ...]) -> np.ndarray:
    """Normalise each consecutive group of columns (semantic, style) on its own."""
    bounds = np.cumsum((0, *sizes))
    if bounds[-1] != features.shape[-1]:
        raise ValueError(f"features have {features.shape[-1]} columns, groups {sizes}")
    return np.concatenate([normalise(features[..., a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)], axis=-1)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def fit_logistic(
    x: np.ndarray, y: np.ndarray, l2: float = L2, init: Head | None = None, negative_weight: float = 1.0
) -> Head:
    """Minimise the class-balanced mean log loss + l2/2 * |w|^2 with L-BFGS; ``init`` warm-starts.

    ``negative_weight`` scales the negative class's total weight (presumed negatives weigh less)."""
    d = x.shape[1]
    sample_weight = _balanced_weights(y, negative_weight)
    sign = 2.0 * y - 1.0

    def loss_and_grad(params: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = params[:d], params[d]
        margin = sign * (x @ w + b)
        loss = float(sample_weight @ np.logaddexp(0.0, -margin) + 0.5 * l2 * (w @ w))
        g = -sample_weight * sign * sigmoid(-margin)
        return loss, np.concatenate([x.T @ g + l2 * w, [g.sum()]])

    start = np.zeros(d + 1)
    if init is not None and init.weight.shape == (d,):
        start = np.concatenate([init.weight.astype(np.float64), [init.bias]])
    result = minimize(loss_and_grad, start, jac=True, method="L-BFGS-B", options={"maxiter": 300, "ftol": 1e-7})
    return Head(weight=result.x[:d].astype(np.float32), bias=float(result.x[d]))


def _balanced_weights(y: np.ndarray, negative_weight: float = 1.0) -> np.ndarray:
    n = len(y)
    n_pos = max(int(y.sum()), 1)
    n_neg = max(n - int(y.sum()), 1)
    if negative_weight != 1.0:  # the negative class weighs negative_weight times the positive one
        return np.where(y == 1, n / (2.0 * n_pos), negative_weight * n / (2.0 * n_neg)) / n
    return np.where(y == 1, n / (2.0 * n_pos), n / (2.0 * n_neg)) / n


def fit_logistic_dual(
    kernel: np.ndarray,
    y: np.ndarray,
    l2: float = L2,
    init: tuple[np.ndarray, float] | None = None,
    max_iterations: int = 300,
    negative_weight: float = 1.0,
) -> tuple[np.ndarray, float]:
    """The same objective as ``fit_logistic`` with w = X.T @ alpha, given the Gram matrix X @ X.T.

    With fewer examples than features (cross-validation folds) this searches n numbers instead
    of D, which is several times faster. ``init`` (alpha, bias) warm-starts. Returns (alpha, bias).
    """
    n = len(y)
    sample_weight = _balanced_weights(y, negative_weight)
    sign = 2.0 * y - 1.0

    def loss_and_grad(params: np.ndarray) -> tuple[float, np.ndarray]:
        alpha, b = params[:n], params[n]
        k_alpha = kernel @ alpha
        margin = sign * (k_alpha + b)
        loss = float(sample_weight @ np.logaddexp(0.0, -margin) + 0.5 * l2 * (alpha @ k_alpha))
        g = -sample_weight * sign * sigmoid(-margin)
        return loss, np.concatenate([kernel @ (g + l2 * alpha), [g.sum()]])

    start = np.zeros(n + 1) if init is None else np.concatenate([init[0], [init[1]]])
    options = {"maxiter": max_iterations, "ftol": 1e-7}
    result = minimize(loss_and_grad, start, jac=True, method="L-BFGS-B", options=options)
    return result.x[:n], float(result.x[n])


def roc_auc(y: np.ndarray, s: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    pos, neg = s[y == 1], s[y == 0]
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def log_loss(y: np.ndarray, s: np.ndarray, negative_weight: float = 1.0) -> float:
    """Class-balanced mean log loss (the negative class weighing ``negative_weight`` times the positive)."""
    s = np.clip(s, 1e-7, 1 - 1e-7)
    if negative_weight != 1.0:
        return float(-(np.log(s[y == 1]).mean() + negative_weight * np.log(1 - s[y == 0]).mean()) / (1 + negative_weight))
    return float(-(np.log(s[y == 1]).mean() + np.log(1 - s[y == 0]).mean()) / 2)


def stratified_folds(y: np.ndarray, k: int, seed: int = 0) -> list[np.ndarray]:
    """k index arrays that split positives and negatives evenly."""
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    for label in (1, 0):
        for i, j in enumerate(rng.permutation(np.flatnonzero(y == label))):
            folds[i % k].append(int(j))
    return [np.array(sorted(f)) for f in folds]


def stratified_sample(y: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """Indices of at most ``limit`` examples keeping the class ratio (all of them if few enough)."""
    if len(y) <= limit:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    positives, negatives = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    take_pos = min(len(positives), max(2, round(limit * len(positives) / len(y))))
    take_neg = min(len(negatives), limit - take_pos)
    return np.sort(np.concatenate([rng.choice(positives, take_pos, False), rng.choice(negatives, take_neg, False)]))


def positives_first_sample(y: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """Indices of at most ``limit`` examples: every positive (up to half of them), negatives for the rest.

    For presumed negatives, which outnumber a few positives: ``stratified_sample`` would keep the
    class ratio and leave most positives out of cross-validation."""
    if len(y) <= limit:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    positives, negatives = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    take_pos = min(len(positives), max(limit // 2, limit - len(negatives)))
    take_neg = min(len(negatives), limit - take_pos)
    return np.sort(np.concatenate([rng.choice(positives, take_pos, False), rng.choice(negatives, take_neg, False)]))


def cross_validation_splits(y: np.ndarray, k: int, seed: int = 0) -> list[list[np.ndarray]]:
    """The fold sets cross-validation averages over: stratified k-fold under ``shuffles(len(y))``
    shuffles seeded from ``seed``."""
    return [stratified_folds(y, k, seed + r) for r in range(shuffles(len(y)))]


def shuffles(n: int) -> int:
    """How many shuffles of k folds cross-validation averages for n examples."""
    return max(1, min(CV_SHUFFLES, CV_SHUFFLE_BUDGET // max(n, 1)))


def out_of_fold_scores(
    kernel: np.ndarray,
    y: np.ndarray,
    folds: list[np.ndarray],
    l2s: tuple[float, ...] = (L2,),
    negative_weight: float = 1.0,
) -> dict[float, np.ndarray]:
    """Held-out scores of each fold from a head fitted on the others, given the Gram matrix, for
    each L2 strength; each fold's path goes from the strongest penalty down, warm-started."""
    scores = {l2: np.zeros(len(y)) for l2 in l2s}
    for held_out in folds:
        train = np.setdiff1d(np.arange(len(y)), held_out)
        inner, cross = kernel[np.ix_(train, train)], kernel[np.ix_(held_out, train)]
        start: tuple[np.ndarray, float] | None = None
        for l2 in sorted(l2s, reverse=True):
            start = fit_logistic_dual(inner, y[train], l2, init=start, max_iterations=CV_ITERATIONS,
                                      negative_weight=negative_weight)
            scores[l2][held_out] = sigmoid(cross @ start[0] + start[1])
    return scores


def best_threshold(y: np.ndarray, s: np.ndarray, balanced: bool = False) -> float:
    """The threshold with the highest F1 on cross-validated scores (midpoints; ties nearest 0.5).

    ``balanced``: negatives count as many, all together, as the positives (for presumed negatives,
    whose number is the trainer's choice, not the data's)."""
    values = np.unique(s)
    cuts = np.concatenate([[0.5], (values[:-1] + values[1:]) / 2])
    best, best_f1 = 0.5, -1.0
    for t in cuts:
        f1 = _balanced_f1(y, s, float(t), 1.0 if balanced else None)
        if f1 > best_f1 + 1e-12 or (abs(f1 - best_f1) <= 1e-12 and abs(t - 0.5) < abs(best - 0.5)):
            best, best_f1 = float(t), f1
    return best


def _balanced_f1(y: np.ndarray, s: np.ndarray, threshold: float, balance: float | None = 1.0) -> float:
    """F1 at the threshold, unrounded (rounded values tie where they differ); with ``balance``, the
    negatives count ``balance`` times as much as the positives, all together."""
    predicted = s >= threshold
    tp = float((predicted & (y == 1)).sum())
    fn = float((~predicted & (y == 1)).sum())
    fp = float((predicted & (y == 0)).sum())
    if balance is not None:
        fp *= balance * (y == 1).sum() / max(int((y == 0).sum()), 1)
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def metrics_at(y: np.ndarray, s: np.ndarray, threshold: float) -> dict[str, float]:
    predicted = s >= threshold
    tp = int((predicted & (y == 1)).sum())
    fp = int((predicted & (y == 0)).sum())
    fn = int((~predicted & (y == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "accuracy": round(float((predicted == (y == 1)).mean()), 4),
    }


def wrong_side(y: np.ndarray, s: np.ndarray, threshold: float, limit: int = MOST_WRONG) -> list[int]:
    """Indices of the examples on the wrong side of ``threshold`` as matching draws it (a positive
    scored below it, a negative at or above it), the furthest from it first (ties by index)."""
    wrong = np.flatnonzero(np.where(y == 1, s < threshold, s >= threshold))
    distance = np.abs(s[wrong] - threshold)
    return [int(i) for i in wrong[np.argsort(-distance, kind="stable")][:limit]]


def choose_form(losses: dict[tuple[str, float], float]) -> tuple[str, float]:
    """The (form, L2 strength) with the lowest held-out log loss, but the semantic form's best
    where it explains the tag and the winner does not cut its loss to ``SEMANTIC_SHARE`` of it."""
    best = min(losses, key=losses.__getitem__)
    semantic = [key for key in losses if key[0] == "semantic"]
    if best[0] == "semantic" or not semantic:
        return best
    semantic_best = min(semantic, key=losses.__getitem__)
    semantic_loss = losses[semantic_best]
    if semantic_loss < SEMANTIC_EXPLAINS and losses[best] >= SEMANTIC_SHARE * semantic_loss:
        return semantic_best
    return best


def _form_input(z: np.ndarray, sizes: tuple[int, int], form: str) -> np.ndarray:
    weights = np.repeat(FORMS[form], sizes)
    weighted: np.ndarray = z * weights
    return weighted


def train_head(
    features: np.ndarray,
    labels: np.ndarray,
    sizes: tuple[int, int],
    previous: Head | None = None,
    forms: tuple[str, ...] = tuple(FORMS),
    presumed_negatives: bool = False,
    seed: int = 0,
    prior: StylePrior | None = None,
) -> TrainedHead:
    """Train one tag's head on raw (semantic | style) features and 0/1 labels.

    With at least two examples of each class, cross-validation (``cross_validation_splits``:
    stratified k-fold, k = min(5, smallest class), averaged over shuffles drawn from ``seed``) picks the form and L2 strength
    (``L2_GRID``) with the lowest held-out log loss (the semantic form unless another cuts that to
    ``SEMANTIC_SHARE`` of it) and the threshold with the best F1 on each
    example's held-out score (averaged over the shuffles), and the reported metrics are those of
    the held-out scores. With fewer, the form is "both", the L2 strength ``L2``, the threshold
    0.5, and no metrics are claimed. The result depends on the features, their order, the labels,
    ``previous`` and ``seed`` only (``shared/domain/training.py`` orders examples by content and
    seeds from the contents).

    ``presumed_negatives``: the 0 labels are unlabelled images presumed negative (see the module
    docstring): they weigh ``PRESUMED_NEGATIVE_WEIGHT`` as a class, cross-validation keeps every
    positive it can, the threshold has the best class-balanced F1, and the metrics count them as
    ``presumed_negatives`` (``negatives`` is 0).

    ``prior``: the ``style`` form sees the style group whitened against it
    (``shared/models/style_prior.py``; ``semantic`` and ``both`` see it as it is), and a style head
    is folded back: whatever the form, a row over the normalised groups.
    """
    z = normalise_groups(features, sizes)
    whitened = z
    if prior is not None:
        whitened = z.copy()
        whitened[:, sizes[0] :] = prior.whiten(z[:, sizes[0] :])
    y = np.asarray(labels, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    k = min(MAX_FOLDS, n_pos, n_neg)
    negative_weight = PRESUMED_NEGATIVE_WEIGHT if presumed_negatives else 1.0
    metrics: dict[str, Any] = {"positives": n_pos, "negatives": n_neg, "folds": k if k >= 2 else 0}
    if presumed_negatives:
        metrics.update(negatives=0, presumed_negatives=n_neg, presumed_negative_weight=negative_weight,
                       note=PRESUMED_NOTE)
    form, threshold, l2 = ("both" if "both" in forms else forms[0]), 0.5, L2
    most_wrong: list[tuple[int, float]] = []
    if k >= 2:
        if presumed_negatives:
            sample = positives_first_sample(y, MAX_CV_EXAMPLES, seed)
        else:
            sample = stratified_sample(y, MAX_CV_EXAMPLES, seed)
        ys = y[sample]
        splits = cross_validation_splits(ys, k, seed)
        semantic, style, seen = z[sample, : sizes[0]], z[sample, sizes[0] :], whitened[sample, sizes[0] :]
        semantic_gram, style_gram = semantic @ semantic.T, style @ style.T
        seen_gram = seen @ seen.T if prior is not None else style_gram  # what the style form sees
        oof: dict[tuple[str, float], np.ndarray] = {}
        losses: dict[tuple[str, float], float] = {}
        for f in forms:
            kernel = FORMS[f][0] ** 2 * semantic_gram + FORMS[f][1] ** 2 * (seen_gram if f == "style" else style_gram)
            runs = [out_of_fold_scores(kernel, ys, folds, L2_GRID, negative_weight) for folds in splits]
            for strength in L2_GRID:
                # each shuffle's held-out log loss, averaged; each example's held-out scores, averaged
                losses[(f, strength)] = float(np.mean([log_loss(ys, run[strength], negative_weight) for run in runs]))
                oof[(f, strength)] = np.mean([run[strength] for run in runs], axis=0)
        form, l2 = choose_form(losses)
        by_form = {f: min(losses[(f, strength)] for strength in L2_GRID) for f in forms}
        scores = oof[(form, l2)]
        threshold = round(best_threshold(ys, scores, balanced=presumed_negatives), 6)  # as stored and matched
        metrics.update(
            folds=len(splits[0]),
            cv_examples=len(sample),
            cv_shuffles=len(splits),
            roc_auc=round(roc_auc(ys, scores), 4),
            **metrics_at(ys, scores, threshold),
            log_loss_by_form={f: round(v, 4) for f, v in by_form.items()},
            log_loss_by_l2={f"{strength:g}": round(losses[(form, strength)], 4) for strength in L2_GRID},
        )
        most_wrong = [(int(sample[j]), round(float(scores[j]), 4)) for j in wrong_side(ys, scores, threshold)]
    metrics["form"] = form
    metrics["l2"] = l2
    style_prior = prior if form == "style" else None
    if style_prior is not None and previous is not None and previous.weight.shape == (z.shape[1],):
        semantic_weight, style_weight = np.split(previous.weight.astype(np.float64), [sizes[0]])  # start from it, whitened
        previous = Head(np.concatenate([semantic_weight, style_prior.unfold(style_weight)]).astype(np.float32),
                        previous.bias)
    fitted = fit_logistic(_form_input(z if style_prior is None else whitened, sizes, form), y, l2=l2, init=previous,
                          negative_weight=negative_weight)
    weight = fitted.weight * np.repeat(FORMS[form], sizes).astype(np.float32)
    if style_prior is not None:
        weight[sizes[0] :] = style_prior.fold(weight[sizes[0] :].astype(np.float64))
    return TrainedHead(Head(weight, fitted.bias), round(threshold, 6), form, metrics, most_wrong)


class HeadMatrix:
    """Every tag's head stacked into one (T, D) matrix: one multiply scores all tags."""

    def __init__(
        self,
        tags: list[str],
        heads: list[Head],
        thresholds: list[float],
        versions: list[int],
        sizes: tuple[int, int],
    ) -> None:
        self.tags = tags
        self.sizes = sizes
        self.thresholds = np.array(thresholds, dtype=np.float64)
        self._rounded_thresholds: list[float] = np.round(self.thresholds, 6).tolist()
        self.versions = versions
        # (D, T), C-ordered: one matrix multiply, faster for small batches than a transposed view.
        # Filled a block of tags at a time: one transposing copy of 7,000 heads took 0.47 s, and
        # every predict process waited for it after each new version; in blocks, 0.04 s.
        self.columns = np.empty((sum(sizes), len(heads)), dtype=np.float32)
        for start in range(0, len(heads), 256):
            self.columns[:, start : start + 256] = np.stack([h.weight for h in heads[start : start + 256]]).T
        self.biases = np.array([h.bias for h in heads], dtype=np.float32)
        self.index = {tag: i for i, tag in enumerate(tags)}

    def select(self, tags: list[str]) -> HeadMatrix:
        """The heads of ``tags`` only, in that order."""
        chosen = [self.index[t] for t in tags]
        heads = [Head(self.columns[:, i], float(self.biases[i])) for i in chosen]
        return HeadMatrix(list(tags), heads, [float(self.thresholds[i]) for i in chosen],
                          [self.versions[i] for i in chosen], self.sizes)

    def scores(self, features: np.ndarray) -> np.ndarray:
        """(N, D) raw (semantic | style) features -> (N, T) probabilities."""
        if not self.tags:
            return np.zeros((len(features), 0))
        z = normalise_groups(features, self.sizes).astype(np.float32)
        return sigmoid((z @ self.columns + self.biases).astype(np.float64))

    def describe(self, scores: np.ndarray, tags: list[str] | None = None,
                 matches_only: bool = False) -> dict[str, dict[str, Any]]:
        """One image's scores as {tag: {score, match, threshold, version}}, best first: every tag's
        (or ``tags``'), or only those that match."""
        chosen = np.arange(len(self.tags)) if tags is None else np.array([self.index[t] for t in tags], dtype=int)
        if matches_only:
            chosen = chosen[scores[chosen] >= self.thresholds[chosen]]
        order = chosen[np.argsort(-scores[chosen], kind="stable")].tolist()
        rounded = np.round(scores, 6).tolist()
        matches = (scores >= self.thresholds).tolist()
        names, thresholds, versions = self.tags, self._rounded_thresholds, self.versions
        return {
            names[i]: {"score": rounded[i], "match": matches[i], "threshold": thresholds[i], "version": versions[i]}
            for i in order
        }
