"""Exports built from the current models (a state archive, the ONNX file for devices): large
(the ONNX file holds the backbone: 19 MB; 5,000 tags' state: 53 MB) and seconds to build, so a
process builds one at a time, in one thread of the shared pool, while other requests for one await
their turn on the event loop; requests for the same models share one build, and the last export
of each kind is kept while those models are current. (Forty concurrent `GET /export/onnx` had
built forty copies at once: 750 MB more memory, and `GET /custom/tags` waited 4 s for a thread;
forty `GET /get_state` of 5,000 tags took 133 s and held 2.4 GB.)

An export being sent is held until its last request ends, so the distinct exports lent out at once
stay within ``max_lent_bytes`` (the bound on answers held unsent; one alone may pass it): 160 slow
downloads of exports of distinct tag lists had held 2 GB, with one kept export per kind.)"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable

from starlette.concurrency import run_in_threadpool

from shared.core.errors import Unavailable
from shared.models.decoding import BUDGET_WAIT_S


class Exports:
    def __init__(self, max_lent_bytes: int) -> None:
        self._turn = asyncio.Lock()
        self._kept: dict[str, tuple[Hashable, bytes]] = {}  # kind -> the models' identity, the export
        self.max_lent_bytes = max_lent_bytes
        self._lent: dict[tuple[str, Hashable], tuple[bytes, int]] = {}  # (kind, models) -> export, its requests

    async def lend(self, kind: str, models: Hashable, build: Callable[[], bytes]) -> bytes:
        """The ``kind`` export of ``models`` for one request to send, which gives it back when it
        ends (``give_back``): one being sent already is shared, counted once; 503 busy if a new one
        would take the exports lent out past ``max_lent_bytes``."""
        key = (kind, models)
        if key not in self._lent:
            kept = self._kept.get(kind)
            if not (kept and kept[0] == models) and self._lent_bytes() >= self.max_lent_bytes:
                raise self._busy()  # before a build that could not be lent
            export = await self._get(kind, models, build)
            if key not in self._lent:  # (another request may have lent it while this one waited)
                lent = self._lent_bytes()
                if lent and lent + len(export) > self.max_lent_bytes:
                    raise self._busy()
                self._lent[key] = (export, 0)
        export, requests = self._lent[key]
        self._lent[key] = (export, requests + 1)
        return export

    def give_back(self, kind: str, models: Hashable) -> None:
        export, requests = self._lent[(kind, models)]
        if requests > 1:
            self._lent[(kind, models)] = (export, requests - 1)
        else:
            del self._lent[(kind, models)]

    def _lent_bytes(self) -> int:
        return sum(len(data) for data, _ in self._lent.values())

    @staticmethod
    def _busy() -> Unavailable:
        return Unavailable("busy", "The server is sending as many exports as it may hold at once; try again shortly.")

    async def _get(self, kind: str, models: Hashable, build: Callable[[], bytes]) -> bytes:
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
