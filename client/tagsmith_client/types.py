"""The shapes of the API's main answers, for type checkers and readers."""

from __future__ import annotations

from typing import Any, TypedDict


class AddedImage(TypedDict):
    image_id: str
    format: str
    width: int
    height: int


class BatchItem(TypedDict, total=False):
    filename: str
    image_id: str | None
    format: str
    width: int
    height: int
    status: int  # only on failure, with error and message
    error: str
    message: str


class BatchResult(TypedDict):
    added: int
    failed: int
    images: list[BatchItem]


class Assignment(TypedDict):
    image_id: str
    tag: str
    type: str
    positives: int
    negatives: int


class Task(TypedDict):
    task_id: str
    tag: str
    status: str
    already_queued: bool


class TaskStatus(TypedDict, total=False):
    task_id: str
    tag: str
    status: str  # queued, started, finished or failed
    progress: float
    stage: str
    enqueued_at: str | None
    started_at: str | None
    ended_at: str | None
    result: dict[str, Any]  # once finished: version, threshold, metrics, trained_at
    error: str  # once failed


class CustomScore(TypedDict):
    score: float
    match: bool
    threshold: float
    version: int


class Prediction(TypedDict):
    keywords: list[dict[str, Any]]
    styles: list[dict[str, Any]]
    style_scores: dict[str, float]
    custom: dict[str, CustomScore]
