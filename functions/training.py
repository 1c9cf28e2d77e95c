"""Training custom tags in the background, following the task, and resetting a tag."""

from __future__ import annotations

from starlette.requests import Request

from shared.domain import catalog, training
from shared.web.app import create_app
from shared.web.responses import JSONResponse
from shared.web.routing import ApiRoute
from shared.web.state import services_of


def train(request: Request) -> JSONResponse:
    """Queue a training of a tag's model.

    The tag needs at least one positive example, and negative examples or, failing those, other
    stored images: a tag with positives only trains against unlabelled stored images as presumed
    negatives, weighted below real ones, and its metrics say how many (`presumed_negatives`). A
    request while a training of the tag is still waiting returns that task (`already_queued`).
    Each training makes a new version, fine-tuned from the current one. A tag no image is labelled
    with is 404 `unknown_tag`, naming the closest tag there is.
    ---
    response:
      status: 202
      description: The training is queued; follow it at `/status/{task_id}`.
      schema: TaskQueued
      example: {task_id: 3f2c..., tag: cat, status: queued, already_queued: false}
    errors: [400, 404, 503]
    """
    return JSONResponse(training.request_training(services_of(request), request.path_params["tag"]), status_code=202)


def status(request: Request) -> JSONResponse:
    """The state of a training task.

    `status` is queued, started, finished or failed; `progress` runs from 0 to 1 through the
    stages embedding, training and saving. Once finished, `result` holds the new version, its
    threshold and its cross-validated metrics; once failed, `error` says why.
    ---
    response:
      description: The task's state.
      schema: Task
      example: {task_id: 3f2c..., tag: cat, status: finished, progress: 1.0, stage: done, result: {tag: cat, version: 1, threshold: 0.41, metrics: {roc_auc: 1.0, f1: 1.0, precision: 1.0, recall: 1.0, accuracy: 1.0}}}
    errors: [404, 503]
    """
    return JSONResponse(services_of(request).queue.status(request.path_params["task_id"]))


def delete(request: Request) -> JSONResponse:
    """Reset a tag: its models and assignments go, the images stay.

    Version numbers are never reused, even after a reset.
    ---
    response: {description: The tag is reset., example: {tag: cat, deleted: true}, schema: TagDeleted}
    errors: [400, 404, 503]
    """
    tag = request.path_params["tag"]
    catalog.delete_tag(services_of(request), tag)
    return JSONResponse({"tag": tag, "deleted": True})


routes = [
    ApiRoute("/custom/train/{tag:path}", train, methods=["GET", "POST"]),
    ApiRoute("/status/{task_id}", status, methods=["GET"]),
    ApiRoute("/custom/delete/{tag:path}", delete, methods=["GET", "POST", "DELETE"]),
]
app = create_app(routes)
