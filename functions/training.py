"""Training custom tags in the background, following the task, and resetting a tag."""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.routing import Route

from shared import catalog
from shared.context import get_services
from shared.errors import bad_request, not_found
from shared.http import create_app
from shared.names import validate_tag
from shared.responses import JSONResponse

_TASK_ID = re.compile(r"[A-Za-z0-9_\-]{1,64}")


def train(request: Request) -> JSONResponse:
    """Queue a training of a tag's model.

    The tag needs at least one positive and one negative example. A request while a training of
    the tag is still waiting returns that task (`already_queued`). Each training makes a new
    version, fine-tuned from the current one.
    ---
    response:
      status: 202
      description: The training is queued; follow it at `/status/{task_id}`.
      example: {task_id: 3f2c..., tag: cat, status: queued, already_queued: false}
    errors: [400, 503]
    """
    services = get_services()
    tag = validate_tag(request.path_params["tag"], services.settings.max_tag_length)
    positives, negatives = services.registry.examples(tag)
    if not positives or not negatives:
        raise bad_request(
            "not_enough_examples",
            f"Tag '{tag}' has {len(positives)} positive and {len(negatives)} negative examples; "
            "training needs at least one of each.",
        )
    task_id, already_queued = services.queue.submit(tag, services.registry.epoch(tag))
    return JSONResponse(
        {"task_id": task_id, "tag": tag, "status": "queued", "already_queued": already_queued},
        status_code=202,
    )


def status(request: Request) -> JSONResponse:
    """The state of a training task.

    `status` is queued, started, finished or failed; `progress` runs from 0 to 1 through the
    stages embedding, training and saving. Once finished, `result` holds the new version, its
    threshold and its cross-validated metrics; once failed, `error` says why.
    ---
    response:
      description: The task's state.
      example: {task_id: 3f2c..., tag: cat, status: finished, progress: 1.0, stage: done, result: {version: 1, threshold: 0.41, metrics: {roc_auc: 1.0, f1: 1.0, precision: 1.0, recall: 1.0, accuracy: 1.0}}}
    errors: [404, 503]
    """
    task_id = request.path_params["task_id"]
    if not _TASK_ID.fullmatch(task_id):
        raise not_found("unknown_task", f"No task with id '{task_id}'.")
    return JSONResponse(get_services().queue.status(task_id))


def delete(request: Request) -> JSONResponse:
    """Reset a tag: its models and assignments go, the images stay.

    Version numbers are never reused, even after a reset.
    ---
    response: {description: The tag is reset., example: {tag: cat, deleted: true}}
    errors: [400, 404, 503]
    """
    services = get_services()
    tag = validate_tag(request.path_params["tag"], services.settings.max_tag_length)
    if not services.registry.tag_exists(tag):
        raise not_found("unknown_tag", f"No tag '{tag}'.")
    catalog.delete_tag(services, tag)
    return JSONResponse({"tag": tag, "deleted": True})


routes = [
    Route("/custom/train/{tag:path}", train, methods=["GET", "POST"]),
    Route("/status/{task_id}", status, methods=["GET"]),
    Route("/custom/delete/{tag:path}", delete, methods=["GET", "POST", "DELETE"]),
]
app = create_app(routes)
