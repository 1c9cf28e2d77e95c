"""Loading and exporting custom models as state archives, and the ONNX file for devices."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from functools import partial

from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from shared.core.errors import Unavailable
from shared.core.names import validate_tag
from shared.domain import backup, state
from shared.web.app import create_app
from shared.web.responses import EndingResponse, JSONResponse, shared_bytes_response
from shared.web.routing import ApiRoute, query_tags
from shared.web.state import backups_of, exports_of, services_of
from shared.web.uploads import read_upload, read_upload_to_file


async def set_state(request: Request) -> JSONResponse:
    """Load custom models from a state archive.

    The whole archive is validated before anything changes; then all its models are published
    at once, each as its tag's next version.
    ---
    upload: data
    response:
      description: The models loaded.
      schema: StateLoaded
      example: {loaded: [{tag: cat, version: 3, threshold: 0.41, published: true}]}
    errors: [400, 409, 413, 503]
    """
    services = services_of(request)
    data = await read_upload(request, services.settings.max_archive_bytes)
    return JSONResponse({"loaded": await run_in_threadpool(state.load_state, services, data)})


async def get_state(request: Request) -> Response:
    """Export the current model of every tag (or one) as a state archive.
    ---
    query:
      tag: {type: string, description: Export only this tag.}
    response: {description: 'A tar of `manifest.json` and one safetensors file per model.', content: tar}
    errors: [400, 404, 503]
    """
    tag = request.query_params.get("tag")
    tags = [validate_tag(tag)] if tag is not None else []
    return await _export(request, "state", tags, state.state_archive, "application/x-tar", "tagsmith-state.tar")


async def get_edge_model(request: Request) -> Response:
    """Export the backbone and custom heads as one ONNX file for devices.

    Its `scores` output matches the server's custom scores within 1e-4 for the same preprocessed
    image; tags, thresholds and versions are in the file's metadata under `tagsmith`.
    ---
    query:
      tag: {type: array, items: {type: string}, description: 'Export only these tags (repeat the parameter: `?tag=a&tag=b`); default every tag.'}
    response: {description: 'An ONNX model.', content: onnx}
    errors: [400, 404, 503]
    """
    # In the tags' sorted order, whatever order they were asked in: one export for one set of models.
    return await _export(request, "edge", sorted(query_tags(request, "tag")), state.edge_model,
                         "application/octet-stream", "tagsmith-edge.onnx")


async def _export(request: Request, kind: str, tags: list[str],
                  build: Callable[..., bytes], media_type: str, filename: str) -> Response:
    """The ``kind`` export of the current models of ``tags`` (every tag when none), built one at a
    time, kept while they are current and lent to this answer while it is sent (``shared.web.exports``)."""
    services, exports = services_of(request), exports_of(request)
    pointers = await run_in_threadpool(state.current_pointers, services, tags)
    models = tuple(pointer.to_json() for pointer in pointers)
    export = await exports.lend(kind, models, partial(build, services, pointers, every=not tags))
    return shared_bytes_response(export, media_type, {"Content-Disposition": f'attachment; filename="{filename}"'},
                                 done=partial(exports.give_back, kind, models))


def get_backup(request: Request) -> Response:
    """Back up everything taught: images, examples, every stored model version, the current ones.

    One tar, streamed as it is read (images one at a time from the store): `image-<n>` members
    (the bytes as uploaded), `model-<n>.tar` members (each stored version's state archive) and,
    last, `manifest.json` (format, backbone, every image's id, file name, sha256 and created_at,
    and every tag's examples, versions and current version). `/restore` loads it into an empty
    server. A backup cut short has no manifest and is refused by `/restore`.
    ---
    response: {description: 'A tar of the images, the model versions and `manifest.json`.', content: tar}
    errors: [503]
    """
    services, backups = services_of(request), backups_of(request)
    slot = backups.take(time.monotonic())
    if slot is None:
        raise Unavailable("busy", "The server is sending as many backups as it may at once; try again shortly.")
    try:
        plan = backup.plan_backup(services)  # Redis is read here: a backend down is a 503, not a cut stream
    except BaseException:
        backups.give_back(slot)
        raise
    return EndingResponse(
        iterate_in_threadpool(slot.send(backup.stream_backup(services, plan))),
        partial(backups.give_back, slot),
        media_type="application/x-tar",
        headers={"Content-Disposition": 'attachment; filename="tagsmith-backup.tar"'},
    )


async def restore(request: Request) -> JSONResponse:
    """Restore a backup (field `data`) into an empty server.

    The server must have no images and no tags (else 409 `not_empty`), and no other restore may be
    running once the upload has come (else 409 `restore_in_progress`). The upload is written to a
    temporary file (at most `TAGSMITH_MAX_BACKUP_BYTES`, as much as all uploads to `/restore` may
    hold at once: past it, 503 `busy`) and validated whole before anything changes; then the images
    keep their ids, file names and dates, the examples their tags, and
    every model version its number, threshold, metrics and training date; the current versions
    are published and new trainings continue after the highest. A failure midway removes what
    was restored.
    ---
    upload: data
    response:
      description: What was restored.
      schema: Restored
      example: {images: 12, tags: [{tag: cat, positives: 6, negatives: 6, versions: [1, 2], current: 1}]}
    errors: [400, 409, 413, 503]
    """
    services = services_of(request)
    await run_in_threadpool(backup.require_restorable, services)  # before a large upload is read at all
    file = await run_in_threadpool(tempfile.TemporaryFile)
    try:
        # Read whole before the restore is claimed: an upload trickling in at the minimum rate (a 4 GiB
        # one for days) held the claim, and every other restore got 409, as long as it lasted.
        await read_upload_to_file(request, services.settings.max_backup_bytes, file)
        claim = await run_in_threadpool(backup.RestoreClaim, services)  # one restore at a time
        try:
            await run_in_threadpool(backup.undo_unfinished_restore, services, claim)  # a crashed restore's leftovers
            await run_in_threadpool(backup.require_empty, services)
            return JSONResponse(await run_in_threadpool(backup.restore_backup, services, file, claim))
        finally:
            await run_in_threadpool(claim.release)
    finally:
        await run_in_threadpool(file.close)


routes = [
    ApiRoute("/set_state", set_state, methods=["POST"]),
    ApiRoute("/get_state", get_state, methods=["GET"]),
    ApiRoute("/export/onnx", get_edge_model, methods=["GET"]),
    ApiRoute("/backup", get_backup, methods=["GET"]),
    ApiRoute("/restore", restore, methods=["POST"]),
]
app = create_app(routes)
