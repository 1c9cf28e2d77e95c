"""Writes wait while a backup is restored.

A restore checks that the server is empty, then adds the backup's images and tags, for minutes
with a large backup. A write landing meanwhile was merged into what it restored, or lost: the
restore's step for a tag removes the archives a deleted tag left under its name, and a tag made
meanwhile (its examples, a version loaded with ``/set_state``) lost its archives there. While the
restore's lease is held, by any process, a request that changes data gets 409
``restore_in_progress``; reads and predictions go on. A write that passed this check before the
restore began may still land (``backup._apply`` stops at a tag made meanwhile).
"""

from __future__ import annotations

from collections.abc import Callable

import redis
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.domain.backup import restore_running
from shared.domain.services import Services
from shared.web.errors import error_response
from shared.web.routing import changes_data

# Writes a restore does not disturb: predictions (POST, but they change nothing) and the restore itself.
UNDISTURBED = ("/predict", "/restore")


class RestoreGuard:
    """Refuses requests that change data (409 ``restore_in_progress``) while a restore runs."""

    def __init__(self, app: ASGIApp, services: Callable[[Scope], Services]) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _writes(scope["method"], scope["path"]):
            try:
                running = await run_in_threadpool(restore_running, self.services(scope))
            except redis.RedisError:  # the write itself answers 503 when it reaches Redis
                running = False
            if running:
                response = error_response(409, "restore_in_progress", "A backup is being restored into this "
                                          "server; wait for it to finish, then send this again.")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _writes(method: str, path: str) -> bool:
    undisturbed = any(path == p or path.startswith(p + "/") for p in UNDISTURBED)
    return changes_data(method, path) and not undisturbed
