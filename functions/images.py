"""Adding images (one or many) and assigning them to tags as positive or negative examples."""

from __future__ import annotations

import contextlib
from typing import Any

import redis
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.routing import Route

from shared.context import Services, get_services
from shared.embeddings import embedding_key, image_key
from shared.errors import ApiError, bad_request, not_found
from shared.http import create_app, read_upload, read_uploads
from shared.images import VERIFY_SIZE, DecodedImage, decode_image
from shared.names import new_image_id, validate_image_id, validate_sample_type, validate_tag
from shared.responses import JSONResponse
from shared.store import StoreUnavailable


def store_image(services: Services, image_id: str, data: bytes, decoded: DecodedImage) -> None:
    """Claim the id, write the bytes, then make the image visible; a crash leaves nothing visible.

    An embedding cached under the id belongs to an earlier image of that id (a delete that raced
    its embedding, or died before reaching the store): it goes first, so it is never reused."""
    services.registry.reserve_image(image_id)
    try:
        services.store.delete(embedding_key(services.spec.id, image_id))
        services.store.put(image_key(image_id), data)
        services.registry.commit_image(
            image_id,
            {"format": decoded.format, "width": decoded.width, "height": decoded.height, "bytes": len(data)},
        )
    except BaseException:
        services.registry.release_image(image_id)
        raise


def forget_image(services: Services, image_id: str) -> list[str]:
    """Delete a stored image: from every tag and the registry first, then its bytes and cached
    embedding. Returns the tags it was an example of."""
    tags = services.registry.delete_image(image_id)
    for key in (image_key(image_id), embedding_key(services.spec.id, image_id)):
        services.store.delete(key)
    return tags


def verify_and_store(services: Services, image_id: str, data: bytes) -> DecodedImage:
    """Check that the upload decodes (400/413/415 if not), then store it: one threadpool trip for both."""
    decoded = decode_image(data, services.settings.max_image_pixels, VERIFY_SIZE)
    store_image(services, image_id, data, decoded)
    return decoded


async def add(request: Request) -> JSONResponse:
    """Store an image.

    The image is decoded and checked before anything is stored. Without `image_id` the server
    generates one.
    ---
    query:
      image_id: {type: string, description: 'The id to give the image (default: a generated one).'}
    upload: data
    response:
      status: 201
      description: The image is stored.
      example: {image_id: cat-1, format: JPEG, width: 451, height: 300}
    errors: [400, 409, 413, 415, 503]
    """
    services = get_services()
    settings = services.settings
    requested = request.query_params.get("image_id")
    image_id = validate_image_id(requested) if requested is not None else new_image_id()
    data = await read_upload(request, settings.max_upload_bytes)
    decoded = await run_in_threadpool(verify_and_store, services, image_id, data)
    return JSONResponse(
        {"image_id": image_id, "format": decoded.format, "width": decoded.width, "height": decoded.height},
        status_code=201,
    )


def _assignment_query(services: Services, request: Request) -> tuple[str, str] | None:
    tag, sample_type = request.query_params.get("tag"), request.query_params.get("type")
    if tag is None and sample_type is None:
        return None
    if tag is None or sample_type is None:
        raise bad_request("missing_parameter", "Give both 'tag' and 'type' to assign the images, or neither.")
    return validate_tag(tag, services.settings.max_tag_length), validate_sample_type(sample_type)


async def add_many(request: Request) -> JSONResponse:
    """Store several images in one request, optionally assigning them all to a tag.

    Each file is handled on its own: the result lists, in the order sent, either the stored
    image or the error that file got (`status`, `error`, `message`), so one bad file does not
    spoil the rest. Send ids as `image_id` fields, one per file in the same order (an empty one
    means a generated id), or none at all.
    ---
    query:
      tag: {type: string, description: Assign every stored image to this tag (with `type`).}
      type: {type: string, enum: [positive, negative], description: Kind of example (with `tag`).}
    upload: {field: data, multiple: true}
    form:
      image_id: {type: array, items: {type: string}, description: 'One id per file, in order.'}
    response:
      description: What became of each file.
      example:
        added: 1
        failed: 1
        images:
          - {filename: cat.jpg, image_id: cat-1, format: JPEG, width: 451, height: 300}
          - {filename: notes.txt, image_id: null, status: 415, error: not_an_image, message: The file is not an image in a supported format.}
    errors: [400, 409, 413, 503]
    """
    services = get_services()
    settings = services.settings
    assignment = _assignment_query(services, request)
    if assignment:
        services.registry.check_room_for([assignment[0]], services.settings.max_tags)
    files, form = await read_uploads(request, settings.max_upload_bytes, settings.max_batch_files)
    ids = [str(x) for x in form.getlist("image_id")]
    if ids and len(ids) != len(files):
        raise bad_request("image_ids_mismatch", f"Got {len(ids)} image ids for {len(files)} files; send one per file.")
    results: list[dict[str, Any]] = []
    for i, (filename, data) in enumerate(files):
        requested = ids[i] if ids else ""
        try:
            if isinstance(data, ApiError):
                raise data
            image_id = validate_image_id(requested) if requested else new_image_id()
            decoded = await run_in_threadpool(verify_and_store, services, image_id, data)
            if assignment:
                try:
                    services.registry.assign(image_id, *assignment, settings.max_tags)
                except (ApiError, StoreUnavailable, redis.RedisError):
                    # e.g. another request took the last free tag, or Redis failed: this file changes
                    # nothing (as far as the backends let us undo it)
                    with contextlib.suppress(StoreUnavailable, redis.RedisError):
                        await run_in_threadpool(forget_image, services, image_id)
                    raise
            results.append({"filename": filename, "image_id": image_id, "format": decoded.format,
                            "width": decoded.width, "height": decoded.height})
        except ApiError as exc:
            results.append({"filename": filename, "image_id": requested or None, "status": exc.status,
                            "error": exc.code, "message": exc.message})
        except (StoreUnavailable, redis.RedisError):
            if not any("error" not in r for r in results):
                raise  # nothing stored yet: the whole request is a 503
            # Earlier files are stored (and assigned): say so, and stop here rather than wait out
            # the backend's timeouts once per remaining file.
            for j in range(i, len(files)):
                results.append({"filename": files[j][0], "image_id": (ids[j] if ids else "") or None,
                                "status": 503, "error": "backend_unavailable",
                                "message": "The backend became unavailable; this file was not stored. Try it again."})
            break
    added = sum("error" not in r for r in results)
    return JSONResponse({"added": added, "failed": len(results) - added, "images": results})


def assign(request: Request) -> JSONResponse:
    """Make a stored image a positive or negative example of a tag.

    An image is never both: the later call wins.
    ---
    response:
      description: The assignment and the tag's example counts.
      example: {image_id: cat-1, tag: cat, type: positive, positives: 6, negatives: 8}
    errors: [400, 404, 409, 503]
    """
    services = get_services()
    params = request.path_params
    image_id = validate_image_id(params["image_id"])
    sample_type = validate_sample_type(params["type"])
    tag = validate_tag(params["tag"], services.settings.max_tag_length)
    if not services.registry.image_exists(image_id):
        raise not_found("unknown_image", f"No image with id '{image_id}'.")
    services.registry.assign(image_id, tag, sample_type, services.settings.max_tags)
    positives, negatives = services.registry.examples(tag)
    return JSONResponse(
        {
            "image_id": image_id,
            "tag": tag,
            "type": sample_type,
            "positives": len(positives),
            "negatives": len(negatives),
        }
    )


def unassign(request: Request) -> JSONResponse:
    """Make an image no example of a tag.

    The image stays stored; `removed` says what it was (`positive`, `negative` or null).
    ---
    response:
      description: What was removed and the tag's example counts.
      example: {image_id: cat-1, tag: cat, removed: positive, positives: 5, negatives: 8}
    errors: [400, 404, 503]
    """
    services = get_services()
    image_id = validate_image_id(request.path_params["image_id"])
    tag = validate_tag(request.path_params["tag"], services.settings.max_tag_length)
    if not services.registry.image_exists(image_id):
        raise not_found("unknown_image", f"No image with id '{image_id}'.")
    if not services.registry.tag_exists(tag):
        raise not_found("unknown_tag", f"No tag '{tag}'.")
    removed = services.registry.unassign(image_id, tag)
    ((positives, negatives),) = services.registry.example_counts([tag])
    return JSONResponse(
        {"image_id": image_id, "tag": tag, "removed": removed, "positives": positives, "negatives": negatives}
    )


routes = [
    Route("/custom/add", add, methods=["POST"]),
    Route("/custom/add_many", add_many, methods=["POST"]),
    Route("/custom/assign/{image_id}/{type}/{tag:path}", assign, methods=["GET", "POST"]),
    Route("/custom/unassign/{image_id}/{tag:path}", unassign, methods=["GET", "POST", "DELETE"]),
]
app = create_app(routes)
