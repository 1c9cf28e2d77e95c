"""Training custom tags in the background, following the task, and resetting a tag."""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from shared import catalog
from shared.context import get_services
from shared.errors import bad_request, not_found
from shared.http import create_app
from shared.names import validate_tag

_TASK_ID = re.compile(r"[A-Za-z0-9_\-]{1,64}")


def train(request: Request) -> JSONResponse:
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
    task_id = request.path_params["task_id"]
    if not _TASK_ID.fullmatch(task_id):
        raise not_found("unknown_task", f"No task with id '{task_id}'.")
    return JSONResponse(get_services().queue.status(task_id))


def delete(request: Request) -> JSONResponse:
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
