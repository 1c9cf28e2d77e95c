"""Exports built from the current models (a state archive, the ONNX file for devices): large
(the ONNX file holds the backbone: 19 MB; 5,000 tags' state: 53 MB) and seconds to build, so a
process builds one at a time, in one thread of the shared pool, while other requests for one await
their turn on the event loop; requests for the same models share one build, and the last export
of each kind is kept while those models are current. (Forty concurrent `GET /export/onnx` had
built forty copies at once: 750 MB more memory, and `GET /custom/tags` waited 4 s for a thread;
forty `GET /get_state` of 5,000 tags took 133 s and held 2.4 GB.)"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable

from starlette.concurrency import run_in_threadpool

from shared.core.errors import Unavailable
from shared.models.decoding import BUDGET_WAIT_S


class Exports:
    def __init__(self) -> None:
        self._turn = asyncio.Lock()
        self._kept: dict[str, tuple[Hashable, bytes]] = {}  # kind -> the models' identity, the export

    async def get(self, kind: str, models: Hashable, build: Callable[[], bytes]) -> bytes:
        """The ``kind`` export of ``models`` (what identifies them: every pointer's JSON),
        built by ``build`` in a thread unless kept; over ``BUDGET_WAIT_S`` waiting, 503 busy."""
        kept = self._kept.get(kind)
        if kept is not None and kept[0] == models:
            return kept[1]
        try:
            async with asyncio.timeout(BUDGET_WAIT_S):
                await self._turn.acquire()
        except TimeoutError:
            raise Unavailable("busy", "The server is building as many exports as it can; try again shortly.") from None
        kept = self._kept.get(kind)
        if kept is not None and kept[0] == models:  # built while this one waited
            self._turn.release()
            return kept[1]
        # The build holds the turn until it ends, even if this request goes away meanwhile (its
        # error, if any, is then nobody's: read here, so that asyncio does not log it as lost).
        building = asyncio.ensure_future(self._build(kind, models, build))
        building.add_done_callback(lambda done: done.cancelled() or done.exception())
        return await asyncio.shield(building)

    async def _build(self, kind: str, models: Hashable, build: Callable[[], bytes]) -> bytes:
        try:
            built = await run_in_threadpool(build)
            self._kept[kind] = (models, built)
            return built
        finally:
            self._turn.release()
