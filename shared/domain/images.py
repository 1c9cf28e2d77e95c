"""Stored images: adding them (one or many, optionally as examples of a tag), describing, showing
and deleting them."""

from __future__ import annotations

import contextlib
import hashlib
import io
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis
from PIL import Image

from shared.core.errors import Conflict, DomainError, NotFound, Unavailable
from shared.core.names import clean_filename, new_image_id, validate_image_id
from shared.data import keys
from shared.data.store import ObjectNotFound, StoreUnavailable
from shared.domain import labels
from shared.domain.embeddings import image_identities
from shared.models.decoding import VERIFY_SIZE, DecodedImage, PixelBudget, Reservation, decode_image, open_image

if TYPE_CHECKING:
    from shared.domain.services import Services

MEDIA_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif",
               "BMP": "image/bmp", "TIFF": "image/tiff"}
BACKENDS_DOWN = (StoreUnavailable, redis.RedisError, Unavailable)
# The sizes thumbnails are kept at (longer side, pixels); a request for another size is made from
# the next one up, so an image has at most this many stored.
THUMBNAIL_SIZES = (64, 128, 256, 512, 1024)


def store_image(services: Services, image_id: str, data: bytes, decoded: DecodedImage, filename: str = "",
                dedupe: bool = False, sha256: str | None = None, holder: str = "") -> str | None:
    """Claim the id (a reservation for ``holder``: ``Registry.reserve_image``), write the bytes, then
    make the image visible; a crash leaves nothing visible. With ``dedupe``, an image of the same
    content committed meanwhile wins: its id is returned and these bytes are removed again.

    An embedding or thumbnail kept under the id belongs to an earlier image of that id (a delete
    that raced its making, or died before reaching the store): they go first, never reused."""
    token = services.registry.reserve_image(image_id, holder)  # the id is unlinked until the commit
    try:
        services.store.delete(keys.embedding_key(services.spec.id, image_id))
        forget_thumbnails(services, image_id)
        services.store.put(keys.image_key(image_id), data)
        meta: dict[str, str | int] = {"format": decoded.format, "width": decoded.width, "height": decoded.height,
                                      "bytes": len(data), "sha256": sha256 or hashlib.sha256(data).hexdigest(),
                                      "decode_pixels": decoded.cost}
        existing = services.registry.commit_image(image_id, token, meta, filename, dedupe)
    except BaseException:
        services.registry.release_image(image_id, token)  # its bytes go with the next remove_unlinked_files
        raise
    if existing is not None:
        services.store.delete(keys.image_key(image_id))
        services.registry.files_removed(image_id)
    return existing


def add_image(services: Services, data: bytes, image_id: str | None = None, filename: str = "",
              reserved: Reservation | None = None, holder: str = "") -> dict[str, Any]:
    """Check that the bytes decode as an image, then store them under ``image_id`` (or a new id),
    waiting to be embedded into the library by a worker. Without ``image_id``, bytes already stored
    give the stored image back (``duplicate``: true) instead of a second copy. ``reserved``: the
    decode's pixels, taken from the budget beforehand (else it waits for them in this thread).
    ``holder``: who reserves the id meanwhile (``store_image``)."""
    added = _add(services, data, image_id, clean_filename(filename), reserved or services.decode_budget, holder)
    services.queue.submit_embedding()
    return added


_ADD_ATTEMPTS = 3  # tries to store bytes whose stored duplicate keeps being deleted before it answers


def _add(services: Services, data: bytes, image_id: str | None, filename: str,
         budget: PixelBudget | Reservation, holder: str = "") -> dict[str, Any]:
    content = hashlib.sha256(data).hexdigest()
    decoded = None
    for _ in range(_ADD_ATTEMPTS):  # the stored copy these bytes duplicate may be deleted meanwhile
        if image_id is None and (existing := services.registry.image_with_content(content)) is not None:
            if (found := _duplicate(services, existing)) is not None:
                return found
            continue
        decoded = decoded or decode_image(data, services.settings.max_image_pixels, VERIFY_SIZE, budget)
        new_id = image_id or new_image_id()
        try:
            existing = store_image(services, new_id, data, decoded, filename, dedupe=image_id is None, sha256=content,
                                   holder=holder)
        except Conflict as exc:
            # The id is taken: by these bytes (a retry, a command run twice), nothing to store.
            if image_id is not None and exc.code == "image_exists" and (found := _same_bytes(services, image_id, content)):
                return found
            raise
        if existing is None:
            return {"image_id": new_id, "filename": filename, "format": decoded.format, "width": decoded.width,
                    "height": decoded.height, "duplicate": False}
        if (found := _duplicate(services, existing)) is not None:
            return found
    raise Conflict("changed_meanwhile", "The stored image with the same content was deleted while this one was "
                   "added, again and again; add it again.")


def _same_bytes(services: Services, image_id: str, content: str) -> dict[str, Any] | None:
    """What an add of these bytes under ``image_id`` answers when that id holds them already (the
    stored image, ``duplicate``: true); None otherwise (an id holding other bytes is 409)."""
    stored = services.registry.image(image_id)
    return _described(image_id, stored) if stored and stored.get("sha256") == content else None


def _duplicate(services: Services, image_id: str) -> dict[str, Any] | None:
    """What an add of bytes stored already as ``image_id`` answers; None if it was deleted meanwhile."""
    stored = services.registry.image(image_id)
    return _described(image_id, stored) if stored else None


def _described(image_id: str, stored: dict[str, str]) -> dict[str, Any]:
    meta = describe(image_id, stored)
    return {**{k: meta.get(k) for k in ("image_id", "filename", "format", "width", "height")}, "duplicate": True}


@dataclass(frozen=True)
class FileResult:
    """What became of one file of a batch: the image stored, or the error that file got."""

    filename: str
    image_id: str | None  # the id asked for (None: a generated one) when refused
    image: dict[str, Any] | None = None  # what ``add_image`` returns
    error: DomainError | None = None


def add_images(
    services: Services,
    files: list[tuple[str, bytes | DomainError]],
    ids: list[str],
    assignment: tuple[str, str] | None = None,
    reserved: Reservation | None = None,
) -> list[FileResult]:
    """Store several files, each on its own, in order, so one bad file does not spoil the rest.
    ``ids`` holds one id per file ('' for a generated one) or none; ``assignment`` (tag, type) makes
    every stored image an example of the tag, a duplicate of a stored one too. ``reserved``: pixels
    taken from the budget beforehand for the largest file, which each decode in turn uses.

    A backend failing midway stops the batch: the files stored so far keep their results and each
    remaining one gets an ``Unavailable`` error (with nothing stored yet, the failure is raised).
    A new tag beyond ``max_tags`` refuses each file (the assignment checks it atomically)."""
    results: list[FileResult] = []
    for i, (filename, data) in enumerate(files):
        requested = ids[i] if ids else ""
        try:
            if isinstance(data, DomainError):
                raise data
            added = _add(services, data, validate_image_id(requested) if requested else None, clean_filename(filename),
                         reserved or services.decode_budget)
            if assignment:
                try:
                    labels.assign_checked(services, added["image_id"], *assignment)
                except (DomainError, *BACKENDS_DOWN):
                    # e.g. another request took the last free tag, or Redis failed: this file changes
                    # nothing (as far as the backends let us undo it)
                    if not added["duplicate"]:  # an image stored before stays as it was
                        with contextlib.suppress(NotFound, *BACKENDS_DOWN):  # not if deleted meanwhile
                            forget_image(services, added["image_id"])
                    raise
            results.append(FileResult(filename, added["image_id"], image=added))
        except BACKENDS_DOWN:
            if not any(r.error is None for r in results):
                raise  # nothing stored yet: the whole request fails
            # Earlier files are stored (and assigned): say so, and stop here rather than wait out
            # the backend's timeouts once per remaining file.
            down = Unavailable("backend_unavailable", "The backend became unavailable; this file was not stored. Try it again.")
            results += [FileResult(files[j][0], (ids[j] if ids else "") or None, error=down) for j in range(i, len(files))]
            break
        except DomainError as exc:
            results.append(FileResult(filename, requested or None, error=exc))
    if any(r.error is None for r in results):
        services.queue.submit_embedding()
    return results


def forget_image(services: Services, image_id: str) -> list[str]:
    """Delete a stored image: from every tag and the registry first, then its bytes, cached
    embedding and thumbnails. Returns the tags it was an example of."""
    token = uuid.uuid4().hex
    tags = services.registry.delete_image(image_id, token)  # the id stays reserved until its files are gone
    if tags is None:
        raise NotFound("unknown_image", f"No image with id '{image_id}' (deleted meanwhile).")
    services.registry.unjournal("images", image_id)  # an image made again under this id is not a restore's
    try:
        _remove_files(services, image_id)
        services.registry.files_removed(image_id)
    finally:  # a store that failed midway: the files go with the next remove_unlinked_files
        services.registry.release_image(image_id, token)
    return tags


def _remove_files(services: Services, image_id: str) -> None:
    for key in (keys.image_key(image_id), keys.embedding_key(services.spec.id, image_id)):
        services.store.delete(key)
    forget_thumbnails(services, image_id)


def remove_unlinked_files(services: Services, most: int = 100) -> int:
    """Remove the files stored under ids with no image to show for them: an add whose process died
    between storing its bytes and committing them, or that failed at its commit; a delete whose store
    failed midway. Without this they stayed for good: generated ids are never used again, and a
    deleted photo stayed on disk. Skips ids an add or delete holds now; returns how many were cleaned."""
    cleaned = 0
    for image_id in services.registry.unlinked(most):
        try:
            token = services.registry.reserve_image(image_id)
        except Conflict:  # a stored image's files, or an add or delete under way: that request clears it
            services.registry.files_stored(image_id)
            continue
        try:
            _remove_files(services, image_id)
            services.registry.files_removed(image_id)
            cleaned += 1
        finally:
            services.registry.release_image(image_id, token)
    return cleaned


def delete_image(services: Services, image_id: str) -> dict[str, Any]:
    known_image(services, image_id)
    return {"image_id": image_id, "deleted": True, "removed_from": forget_image(services, image_id)}


def known_image(services: Services, image_id: str) -> dict[str, str]:
    """The image's metadata; NotFound if there is no such image."""
    meta = services.registry.image(image_id)
    if not meta:
        raise NotFound("unknown_image", f"No image with id '{image_id}'.")
    return meta


_INTERNAL = ("row", "decode_pixels")  # an image's fields the API does not show (its library row, its decoding cost)


def describe(image_id: str, meta: dict[str, str]) -> dict[str, Any]:
    """An image as the API shows it (its file name '' when it was sent without one)."""
    ints = ("width", "height", "bytes")
    shown = {k: int(v) if k in ints else v for k, v in meta.items() if k not in _INTERNAL}
    return {"image_id": image_id, "filename": "", **shown}


def image_page(services: Services, offset: int, limit: int) -> dict[str, Any]:
    """A page of stored images, newest first, and how many there are."""
    ids = services.registry.image_ids(offset, limit)
    images = [describe(i, m) for i, m in zip(ids, services.registry.images(ids), strict=True) if m]
    return {"total": services.registry.image_count(), "offset": offset, "limit": limit, "images": images}


def image_details(services: Services, image_id: str) -> dict[str, Any]:
    meta = known_image(services, image_id)
    return {**describe(image_id, meta), "tags": services.registry.assignments(image_id)}


def original(services: Services, image_id: str) -> tuple[bytes, str]:
    """The bytes as uploaded and their media type."""
    meta = known_image(services, image_id)
    return services.store.get(keys.image_key(image_id)), MEDIA_TYPES.get(meta.get("format", ""), "application/octet-stream")


def thumbnail(services: Services, image_id: str, size: int, reserved: Reservation | None = None) -> bytes:
    """A JPEG no larger than ``size`` on its longer side, upright.

    Made from a stored thumbnail of the next size up in ``THUMBNAIL_SIZES``, which is made once from
    the original (one process at a time per image) and kept: the original, which may be a
    50-megapixel PNG, is decoded once per size, not once per request. ``reserved``: the original's
    pixels, taken from the decode budget beforehand (``embeddings.stored_pixels``)."""
    kept = kept_thumbnail(services, image_id, size)
    if kept is not None:
        return kept
    base = next(s for s in THUMBNAIL_SIZES if s >= size)
    key = keys.thumbnail_key(image_id, base)
    with services.thumbnail_locks.hold(key):
        try:
            stored = services.store.get(key)  # made by another request meanwhile
        except ObjectNotFound:
            (made_of,) = image_identities(services, [image_id])
            original = decode_image(services.store.get(keys.image_key(image_id)),
                                    services.settings.max_image_pixels, base, reserved or services.decode_budget)
            stored = _jpeg(original.image, base)
            services.store.put(key, stored)
            if image_identities(services, [image_id]) != [made_of]:  # deleted, or another image under its id
                services.store.delete(key)
    return _resized(stored, base, size)


def kept_thumbnail(services: Services, image_id: str, size: int) -> bytes | None:
    """``thumbnail`` if the one it is made from is kept already (no original to decode), else None."""
    base = next(s for s in THUMBNAIL_SIZES if s >= size)
    try:
        stored = services.store.get(keys.thumbnail_key(image_id, base))
    except ObjectNotFound:
        return None
    return _resized(stored, base, size)


def _resized(stored: bytes, base: int, size: int) -> bytes:
    """A kept thumbnail (``base`` on its longer side) at ``size``."""
    return stored if size == base else _jpeg(open_image(stored).convert("RGB"), size)


def _jpeg(image: Image.Image, size: int) -> bytes:
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=82, optimize=True)
    return out.getvalue()


def forget_thumbnails(services: Services, image_id: str) -> None:
    for key in list(services.store.list(keys.thumbnail_prefix(image_id))):
        services.store.delete(key)
