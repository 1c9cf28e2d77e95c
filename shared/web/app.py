"""The app factory every function uses: tagsmith's error contract, API keys, body limits, request
ids, access logs and metrics around its routes, plus ``/health``, ``/ready``, ``/metrics``,
``/openapi.json`` and ``/docs``.

The app's lifespan builds the process's ``Services`` once, from the settings it is given (or, for
an app started by uvicorn, from the environment, read then), and hands them to every request in
``request.state``; an app that runs the backbone loads it before it answers.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.routing import BaseRoute

from shared.core.process import tune_process
from shared.core.settings import Settings, read_settings
from shared.domain.services import Services, build_services
from shared.web import openapi, ops
from shared.web.auth import ApiKeys
from shared.web.batching import MicroBatcher
from shared.web.errors import HANDLERS
from shared.web.exports import Exports
from shared.web.limits import BodyBudget, BodyLimit, body_limit_for_path
from shared.web.observability import RequestObserver
from shared.web.origins import SameOrigin
from shared.web.restoring import RestoreFlag, RestoreGuard
from shared.web.state import settings_of
from shared.web.streams import StreamSlots

log = logging.getLogger("tagsmith")

# Backups a process streams at once (``shared.web.streams``): each holds its plan (about 1 KB an
# image) for as long as its client reads, and a hundred slow ones at 100,000 images would have held 10 GB.
BACKUPS_AT_ONCE = 4


def create_app(
    routes: Sequence[BaseRoute],
    *,
    settings: Settings | None = None,
    services: Services | None = None,
    backbone: bool = False,
) -> Starlette:
    """An app serving ``routes``. Its lifespan uses ``services`` if given, else builds them from
    ``settings`` (default: the environment's, read when the app starts). With ``backbone``, the
    backbone loads before the app answers and concurrent requests share it (``shared.web.batching``)."""
    tune_process()  # however the app is started: tagsmith serve, uvicorn, tests

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        own = services or build_services(settings or read_settings())
        state: dict[str, Any] = {"services": own, "body_budget": BodyBudget(own.settings.max_body_bytes_in_flight),
                                 "spool_budget": BodyBudget(body_limit_for_path(own.settings, "/restore")),  # one backup's worth
                                 "exports": Exports(own.settings.max_unsent_bytes),
                                 "backups": StreamSlots(BACKUPS_AT_ONCE),
                                 "restore_flag": RestoreFlag(own.settings.redis_url, own.registry.lease_key("restore"))}
        if backbone:
            loaded = await run_in_threadpool(lambda: own.backbone)
            log.info("backbone ready: %s, %s", loaded.runtime, loaded.precision)
            state["batcher"] = MicroBatcher(loaded, own.settings.predict_batch_size, own.settings.torch_threads)
        try:
            yield state
        finally:
            await state["restore_flag"].close()
            if "batcher" in state:
                await state["batcher"].close()
            if services is None:
                own.redis.close()

    app = Starlette(
        routes=[*ops.routes, *openapi.routes, *routes],
        middleware=[
            Middleware(RequestObserver),
            Middleware(SameOrigin, settings=settings_of),
            Middleware(ApiKeys, keys=lambda scope: settings_of(scope).api_key_list),
            Middleware(RestoreGuard, flag=lambda scope: scope["state"]["restore_flag"]),
            Middleware(BodyLimit, settings=settings_of, budget=lambda scope: scope["state"]["body_budget"],
                       spool_budget=lambda scope: scope["state"]["spool_budget"]),
        ],
        exception_handlers=HANDLERS,
        lifespan=lifespan,
    )
    app.state.runs_backbone = backbone
    return app
