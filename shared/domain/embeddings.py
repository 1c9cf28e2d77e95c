"""Embeddings of stored images, computed in batches and cached in the object store."""

from __future__ import annotations

import contextlib
import io
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, cast

import numpy as np

from shared.core.npy import load_array
from shared.core.process import KeyedLocks, cpu_pool
from shared.data.keys import embedding_key, image_key
from shared.data.store import ObjectNotFound, ObjectStore
from shared.models.backbone import Backbone, preprocess
from shared.models.backbone.device_decode import DeviceDecoder, Jpeg
from shared.models.decoding import PixelBudget, Reservation, decode_image

if TYPE_CHECKING:
    from shared.domain.services import Services

LOOKAHEAD = 2  # batches being read and decoded ahead of the backbone
_EMBEDDING = KeyedLocks()  # per image id: an image is embedded by one caller of this process at a time


def to_bytes(vector: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, vector.astype(np.float32), allow_pickle=False)
    return buffer.getvalue()


def vector_from_bytes(data: bytes, size: int) -> np.ndarray | None:
    try:
        vector = load_array(data)  # on many threads at once (shared/core/npy.py)
    except ValueError:
        return None
    return vector if vector.shape == (size,) and vector.dtype == np.float32 else None


def embed_stored_images(services: Services, image_ids: list[str], budget: PixelBudget | Reservation | None = None) -> np.ndarray:
    """(N, D) feature vectors (semantic | style) of stored images, as ``embed_present_images``;
    an image whose bytes are gone raises ObjectNotFound."""
    features, kept = embed_present_images(services, image_ids, budget=budget)
    if len(kept) < len(image_ids):
        gone = min(set(range(len(image_ids))) - set(kept))
        raise ObjectNotFound(image_key(image_ids[gone]))
    return features


def embed_present_images(
    services: Services,
    image_ids: list[str],
    progress: Callable[[int, int], None] | None = None,
    budget: PixelBudget | Reservation | None = None,
) -> tuple[np.ndarray, list[int]]:
    """Feature vectors (semantic | style) of the stored images whose bytes are still there (others
    were deleted meanwhile), and their positions in ``image_ids``: ``embed_images`` with this
    process's store, backbone, limits and decoding budget (or ``budget``: a request's pixels,
    reserved beforehand for ``pixels_to_embed``)."""
    settings = services.settings

    def decode(data: bytes) -> np.ndarray:
        return preprocess(decode_image(data, settings.max_image_pixels, budget=budget or services.decode_budget).image)

    return embed_images(services.store, services.backbone, image_ids, decode, settings.embed_batch_size, progress,
                        identity=lambda ids: image_identities(services, ids),
                        on_device=DeviceDecoder.for_backbone(services.backbone, settings.max_image_pixels)
                        if settings.device_decode else None)


def pixels_to_embed(services: Services, image_ids: list[str]) -> int:
    """The decode budget's pixels the largest of these images without a cached embedding holds
    while it decodes (0 if all are cached): what a request reserves before it embeds them."""
    spec_id = services.backbone.spec.id
    cached = cpu_pool().map(lambda image_id: services.store.exists(embedding_key(spec_id, image_id)), image_ids)
    missing = [image_id for image_id, found in zip(image_ids, cached, strict=True) if not found]
    return max((stored_pixels(meta) for meta in services.registry.images(missing)), default=0) if missing else 0


def stored_pixels(meta: dict[str, str]) -> int:
    """The pixels of the decode budget a stored image holds while it decodes: as measured when it
    was added (an animated WebP's four canvases), else its size as stored (images added before that
    was kept; an animated one among them waits for the rest in its thread, at most 60 s)."""
    return int(meta.get("decode_pixels") or int(meta.get("width", 0)) * int(meta.get("height", 0)))


def image_identities(services: Services, image_ids: list[str]) -> list[str]:
    """What each id holds now: its content hash ('' once deleted); the time it was added for
    images stored before hashes were kept."""
    return [meta.get("sha256") or meta.get("created_at", "") for meta in services.registry.images(image_ids)]


def embed_images(
    store: ObjectStore,
    backbone: Backbone,
    image_ids: list[str],
    decode: Callable[[bytes], np.ndarray],
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
    identity: Callable[[list[str]], list[str]] | None = None,
    on_device: DeviceDecoder | None = None,
) -> tuple[np.ndarray, list[int]]:
    """Feature vectors of the stored images whose bytes are still there, and their positions in
    ``image_ids``. Cached vectors are read, the rest decoded (``decode``: bytes to backbone input)
    and embedded in batches of ``batch_size``, and cached; a cached vector of another size (an older
    layout) is recomputed. ``progress(done, total)`` follows it.

    ``identity`` names what each id holds (its content hash): an id that held something else once
    its vector was cached (deleted and added anew meanwhile) has that vector removed again, so a
    new image never gets an old one's embedding.

    ``on_device`` (a torch backbone on CUDA): JPEGs it takes are read ahead as bytes and decoded
    and resized on the device; everything else is decoded ahead by ``decode`` as before."""
    spec = backbone.spec
    width = spec.embedding_size + spec.style_size
    pool = cpu_pool()

    def cached(image_id: str) -> np.ndarray | None:
        try:
            return vector_from_bytes(store.get(embedding_key(spec.id, image_id)), width)
        except ObjectNotFound:
            return None

    def pixels(i: int) -> np.ndarray | Jpeg | None:
        try:
            data = store.get(image_key(image_ids[i]))
        except ObjectNotFound:
            return None
        return (on_device.probe(data) if on_device else None) or decode(data)

    def read_cached(positions: list[int]) -> list[int]:
        """Fill ``result`` at ``positions`` from the cache (reads overlap); the positions not cached."""
        vectors = pool.map(cached, [image_ids[i] for i in positions])
        not_cached = []
        for i, vector in zip(positions, vectors, strict=True):
            if vector is None:
                not_cached.append(i)
            else:
                result[i] = vector
        return not_cached

    def embed_missing(missing: list[int]) -> set[int]:
        """Embed the images at ``missing`` into ``result`` and the cache, in batches; the
        positions whose image was deleted meanwhile."""
        gone: set[int] = set()
        done = len(image_ids) - len(missing)
        if progress:
            progress(done, len(image_ids))
        read_as = dict(zip(missing, identity([image_ids[i] for i in missing]), strict=True)) if identity and missing else {}

        def settle(here: list[int], writes: list[Future[None]]) -> None:
            """Wait for a batch's cache writes; then drop the vectors of ids that hold something else
            now (deleted and added anew while they were embedded)."""
            for write in writes:
                write.result()
            if identity:
                for i, now in zip(here, identity([image_ids[i] for i in here]), strict=True):
                    if now != read_as[i]:
                        store.delete(embedding_key(spec.id, image_ids[i]))

        # While the backbone runs one batch, the pool reads, decodes and resizes the next two, and
        # writes the previous one's vectors to the cache.
        batches = [missing[start : start + batch_size] for start in range(0, len(missing), batch_size)]
        upcoming = deque([pool.submit(pixels, i) for i in batch] for batch in batches[:LOOKAHEAD])
        writing: tuple[list[int], list[Future[None]]] | None = None
        try:
            for k, batch in enumerate(batches):
                read = [future.result() for future in upcoming.popleft()]
                if k + LOOKAHEAD < len(batches):
                    upcoming.append([pool.submit(pixels, i) for i in batches[k + LOOKAHEAD]])
                gone.update(i for i, image in zip(batch, read, strict=True) if image is None)  # deleted meanwhile
                here = [i for i, image in zip(batch, read, strict=True) if image is not None]
                if here:
                    images = [image for image in read if image is not None]
                    if on_device:
                        vectors = on_device.embed(images, decode).vectors
                    else:
                        vectors = backbone.embed_pixels(np.stack(cast(list[np.ndarray], images))).vectors  # all decoded on the CPU
                    result[here] = vectors
                    if writing:
                        settle(*writing)
                    writing = here, [
                        pool.submit(store.put, embedding_key(spec.id, image_ids[i]), to_bytes(vector))
                        for i, vector in zip(here, vectors, strict=True)
                    ]
                done += len(batch)
                if progress:
                    progress(done, len(image_ids))
        finally:  # even when a batch failed: its predecessor's writes end and are checked
            if writing:
                settle(*writing)
        return gone

    result = np.zeros((len(image_ids), width), dtype=np.float32)
    missing = read_cached(list(range(len(image_ids))))
    # Requests that need the same new images (suggestions right after an upload) embed each once:
    # a caller holds its images' locks (taken in one order by every caller), and one that waited
    # reads what the caller before it cached. Requests for other images go on meanwhile.
    with contextlib.ExitStack() as held:
        for image_id in sorted({image_ids[i] for i in missing}):
            held.enter_context(_EMBEDDING.hold(image_id))
        gone = embed_missing(read_cached(missing))
    kept = [i for i in range(len(image_ids)) if i not in gone]
    return result[kept], kept
