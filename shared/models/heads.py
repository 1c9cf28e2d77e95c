"""Custom heads: class-balanced, L2-regularised logistic regression on normalised embeddings.

Training picks the regularisation strength and the decision threshold by stratified
cross-validation and reports the cross-validated metrics. Retraining starts the optimiser
from the previous head (fine-tuning). At predict time all heads are one matrix
(``HeadMatrix``): one multiply scores every tag.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize

L2_GRID = (1e-3, 1e-2, 1e-1)
MAX_FOLDS = 5


@dataclass(frozen=True)
class Head:
    weight: np.ndarray  # (D,) float32
    bias: float


@dataclass(frozen=True)
class TrainedHead:
    head: Head
    threshold: float
    metrics: dict[str, Any]


def normalise(x: np.ndarray) -> np.ndarray:
    """Scale each embedding to unit length times sqrt(D), so features are O(1) whatever D is."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12) * np.sqrt(x.shape[-1])


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, init: Head | None = None) -> Head:
    """Minimise the class-balanced mean log loss + l2/2 * |w|^2 with L-BFGS.

    ``x`` is already normalised; ``init`` warm-starts the optimiser.
    """
    n, d = x.shape
    n_pos = max(int(y.sum()), 1)
    n_neg = max(n - int(y.sum()), 1)
    sample_weight = np.where(y == 1, n / (2.0 * n_pos), n / (2.0 * n_neg)) / n
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
    result = minimize(loss_and_grad, start, jac=True, method="L-BFGS-B", options={"maxiter": 500})
    return Head(weight=result.x[:d].astype(np.float32), bias=float(result.x[d]))


def score(head: Head, x: np.ndarray) -> np.ndarray:
    return sigmoid(x @ head.weight.astype(np.float64) + head.bias)


def roc_auc(y: np.ndarray, s: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    pos, neg = s[y == 1], s[y == 0]
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def stratified_folds(y: np.ndarray, k: int, seed: int = 0) -> list[np.ndarray]:
    """k index arrays that split positives and negatives evenly."""
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    for label in (1, 0):
        idx = rng.permutation(np.flatnonzero(y == label))
        for i, j in enumerate(idx):
            folds[i % k].append(int(j))
    return [np.array(sorted(f)) for f in folds]


def out_of_fold_scores(x: np.ndarray, y: np.ndarray, l2: float, folds: list[np.ndarray]) -> np.ndarray:
    scores = np.zeros(len(y))
    for held_out in folds:
        train = np.setdiff1d(np.arange(len(y)), held_out)
        scores[held_out] = score(fit_logistic(x[train], y[train], l2), x[held_out])
    return scores


def best_threshold(y: np.ndarray, s: np.ndarray) -> float:
    """The threshold with the highest F1 on cross-validated scores (midpoint between scores)."""
    candidates = np.unique(s)
    cuts = np.concatenate([[0.5], (candidates[:-1] + candidates[1:]) / 2]) if len(candidates) > 1 else [0.5]
    best, best_f1 = 0.5, -1.0
    for t in cuts:
        f1 = metrics_at(y, s, float(t))["f1"]
        if f1 > best_f1 + 1e-12 or (abs(f1 - best_f1) <= 1e-12 and abs(t - 0.5) < abs(best - 0.5)):
            best, best_f1 = float(t), f1
    return best


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


def train_head(embeddings: np.ndarray, labels: np.ndarray, previous: Head | None = None) -> TrainedHead:
    """Train one tag's head on raw embeddings and 0/1 labels.

    With at least two examples of each class, the L2 strength and the threshold come from
    stratified k-fold cross-validation (k = min(5, smallest class)), and the reported
    metrics are those of the held-out folds. With fewer, the threshold is 0.5 and the
    metrics say that cross-validation was not possible.
    """
    x, y = normalise(embeddings), np.asarray(labels, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    k = min(MAX_FOLDS, n_pos, n_neg)
    metrics: dict[str, Any] = {"positives": n_pos, "negatives": n_neg, "folds": k if k >= 2 else 0}
    l2, threshold = L2_GRID[1], 0.5
    if k >= 2:
        folds = stratified_folds(y, k)
        by_l2 = {c: out_of_fold_scores(x, y, c, folds) for c in L2_GRID}
        l2 = max(L2_GRID, key=lambda c: (roc_auc(y, by_l2[c]), -abs(np.log10(c) + 2)))
        oof = by_l2[l2]
        threshold = best_threshold(y, oof)
        metrics.update(roc_auc=round(roc_auc(y, oof), 4), **metrics_at(y, oof, threshold))
    metrics["l2"] = l2
    head = fit_logistic(x, y, l2, init=previous)
    return TrainedHead(head=head, threshold=round(threshold, 6), metrics=metrics)


class HeadMatrix:
    """Every tag's head stacked into one (T, D) matrix: one multiply scores all tags."""

    def __init__(self, tags: list[str], heads: list[Head], thresholds: list[float], versions: list[int]) -> None:
        self.tags = tags
        self.thresholds = np.array(thresholds, dtype=np.float64)
        self.versions = versions
        dim = heads[0].weight.shape[0] if heads else 0
        self.weights = np.stack([h.weight for h in heads]).astype(np.float64) if heads else np.zeros((0, dim))
        self.biases = np.array([h.bias for h in heads], dtype=np.float64)
        self.index = {tag: i for i, tag in enumerate(tags)}

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, D) raw embeddings -> (N, T) probabilities."""
        if not self.tags:
            return np.zeros((len(embeddings), 0))
        return sigmoid(normalise(embeddings) @ self.weights.T + self.biases)

    def describe(self, scores: np.ndarray, tags: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """One image's scores as {tag: {score, match, threshold, version}}, best first."""
        chosen = [self.index[t] for t in tags] if tags is not None else range(len(self.tags))
        rows = {
            self.tags[i]: {
                "score": round(float(scores[i]), 6),
                "match": bool(scores[i] >= self.thresholds[i]),
                "threshold": round(float(self.thresholds[i]), 6),
                "version": self.versions[i],
            }
            for i in chosen
        }
        return dict(sorted(rows.items(), key=lambda kv: -kv[1]["score"]))
