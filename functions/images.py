"""Adding images (one or many) and assigning them to tags as positive or negative examples."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from shared.core.errors import InvalidInput
from shared.core.names import validate_image_id, validate_sample_type, validate_tag
from shared.domain import images, labels
from shared.models.decoding import decode_cost
from shared.web.app import create_app
from shared.web.errors import error_row
from shared.web.responses import JSONResponse
from shared.web.routing import ApiRoute
from shared.web.state import services_of
from shared.web.uploads import read_named_upload, read_uploads


async def add(request: Request) -> JSONResponse:
    """Store an image.

    The image is decoded and checked before anything is stored, and kept with its file name (the
    upload's, or `filename`). Without `image_id` the server generates one, and bytes already stored
    give the stored image back (`duplicate: true`, status 200) instead of a second copy. A worker
    then embeds it into the library and scores it with every tag's model.
    ---
    query:
      image_id: {type: string, description: 'The id to give the image (default: a generated one).'}
      filename: {type: string, description: "The file name to keep (default: the upload's)."}
    upload: data
    response:
      status: 201
      also: [200]
      description: The image is stored (200 with `duplicate` true when it was stored already).
      schema: AddedImage
      example: {image_id: cat-1, filename: cat.jpg, format: JPEG, width: 451, height: 300, duplicate: false}
    errors: [400, 409, 413, 415, 503]
    """
    services = services_of(request)
    requested = request.query_params.get("image_id")
    image_id = validate_image_id(requested) if requested is not None else None
    data, filename = await read_named_upload(request, services.settings.max_upload_bytes)
    filename = request.query_params.get("filename", filename)
    # The decode's pixels are awaited here, on the event loop: no thread of the shared pool waits for them.
    pixels = await run_in_threadpool(decode_cost, data, services.settings.max_image_pixels)
    async with services.decode_budget.reserve(pixels) as reserved:
        added = await run_in_threadpool(images.add_image, services, data, image_id, filename, reserved)
    return JSONResponse(added, status_code=200 if added["duplicate"] else 201)


def _assignment_query(request: Request) -> tuple[str, str] | None:
    tag, sample_type = request.query_params.get("tag"), request.query_params.get("type")
    if tag is None and sample_type is None:
        return None
    if tag is None or sample_type is None:
        raise InvalidInput("missing_parameter", "Give both 'tag' and 'type' to assign the images, or neither.")
    return validate_tag(tag), validate_sample_type(sample_type)  # a new tag's length: check_new_tags


async def add_many(request: Request) -> JSONResponse:
    """Store several images in one request, optionally assigning them all to a tag.

    Each file is handled on its own: the result lists, in the order sent, either the stored
    image or the error that file got (`status`, `error`, `message`), so one bad file does not
    spoil the rest. Send ids as `image_id` fields, one per file in the same order (an empty one
    means a generated id), or none at all. Each image keeps its upload's file name; a file whose
    bytes are stored already (without an id of its own) gives the stored image (`duplicate: true`),
    which the tag is then assigned to.
    ---
    query:
      tag: {type: string, description: Assign every stored image to this tag (with `type`).}
      type: {type: string, enum: [positive, negative], description: Kind of example (with `tag`).}
    upload: {field: data, multiple: true}
    form:
      image_id: {type: array, items: {type: string}, description: 'One id per file, in order.'}
    response:
      description: What became of each file.
      schema: AddedBatch
      example:
        added: 1
        failed: 1
        images:
          - {filename: cat.jpg, image_id: cat-1, format: JPEG, width: 451, height: 300, duplicate: false}
          - {filename: notes.txt, image_id: null, status: 415, error: not_an_image, message: "The file is not an image in a supported format (JPEG, PNG, WebP, GIF, BMP or TIFF)."}
    errors: [400, 409, 413, 503]
    """
    services = services_of(request)
    settings = services.settings
    assignment = _assignment_query(request)
    if assignment:  # refused before the body is read; each assignment checks the room again, atomically
        await run_in_threadpool(labels.check_new_tags, services, [assignment[0]])
        await run_in_threadpool(services.registry.check_room_for, [assignment[0]], settings.max_tags)
    files, form = await read_uploads(request, settings.max_upload_bytes, settings.max_batch_files)
    sent = form.getlist("image_id")
    ids = [i for i in sent if isinstance(i, str)]
    if len(ids) != len(sent):
        raise InvalidInput("invalid_image_id", "Send each image_id as a text field, not as a file.")
    if ids and len(ids) != len(files):
        raise InvalidInput("image_ids_mismatch", f"Got {len(ids)} image ids for {len(files)} files; send one per file.")
    # The pixels of the largest image, awaited on the event loop; the files are decoded one by one.
    pixels = await run_in_threadpool(
        lambda: max((decode_cost(data, settings.max_image_pixels) for _, data in files if isinstance(data, bytes)),
                    default=0))
    async with services.decode_budget.reserve(pixels) as reserved:
        results = await run_in_threadpool(images.add_images, services, files, ids, assignment, reserved)
    rows = [
        {"filename": r.filename, "image_id": r.image_id, **error_row(r.error)} if r.error
        else {"filename": r.filename, **(r.image or {})}
        for r in results
    ]
    added = sum(r.error is None for r in results)
    return JSONResponse({"added": added, "failed": len(results) - added, "images": rows})


def assign(request: Request) -> JSONResponse:
    """Make a stored image a positive or negative example of a tag.

    An image is never both: the later call wins.
    ---
    response:
      description: The assignment and the tag's example counts.
      schema: Assignment
      example: {image_id: cat-1, tag: cat, type: positive, positives: 6, negatives: 8}
    errors: [400, 404, 409, 503]
    """
    p = request.path_params
    return JSONResponse(labels.assign(services_of(request), p["image_id"], p["tag"], p["type"]))


def unassign(request: Request) -> JSONResponse:
    """Make an image no example of a tag.

    The image stays stored; `removed` says what it was (`positive`, `negative` or null).
    ---
    response:
      description: What was removed and the tag's example counts.
      schema: Unassignment
      example: {image_id: cat-1, tag: cat, removed: positive, positives: 5, negatives: 8}
    errors: [400, 404, 503]
    """
    p = request.path_params
    return JSONResponse(labels.unassign(services_of(request), p["image_id"], p["tag"]))


routes = [
    ApiRoute("/custom/add", add, methods=["POST"]),
    ApiRoute("/custom/add_many", add_many, methods=["POST"]),
    ApiRoute("/custom/assign/{image_id}/{type}/{tag:path}", assign, methods=["GET", "POST"]),
    ApiRoute("/custom/unassign/{image_id}/{tag:path}", unassign, methods=["GET", "POST", "DELETE"]),
]
app = create_app(routes)
