"""Work on stored images that a request hands to a thread of the shared pool once the decode
budget's pixels for it are taken, awaited on the event loop (as uploads and first thumbnails
await theirs): no thread of the pool waits for pixels, so routes without images keep their threads
while large images queue among themselves."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from starlette.concurrency import run_in_threadpool

from shared.domain.embeddings import pixels_to_embed
from shared.models.decoding import Reservation

if TYPE_CHECKING:
    from shared.domain.services import Services

T = TypeVar("T")


async def embedding_stored(services: Services, image_ids: list[str], work: Callable[[Reservation], T]) -> T:
    """``work(reserved)`` in a thread of the pool, ``reserved`` holding the pixels that embedding
    those of ``image_ids`` not cached yet needs (``pixels_to_embed``: none once all are cached)."""
    pixels = await run_in_threadpool(pixels_to_embed, services, image_ids)
    async with services.decode_budget.reserve(pixels) as reserved:
        return await run_in_threadpool(work, reserved)
