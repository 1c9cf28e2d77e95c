"""Writes wait while a backup is restored.

A restore checks that the server is empty, then adds the backup's images and tags, for minutes
with a large backup. A write landing meanwhile was merged into what it restored, or lost: the
restore's step for a tag removes the archives a deleted tag left under its name, and a tag made
meanwhile (its examples, a version loaded with ``/set_state``) lost its archives there. While the
restore's lease is held, by any process, a request that changes data gets 409
``restore_in_progress``; reads and predictions go on. A body that took more than a second to come is
checked again once it has come (one begun before the restore and trickling in for minutes had
landed in it). A write that passed both checks may still land (``backup._apply`` stops at a tag
made meanwhile).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis
import redis.asyncio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.web.errors import HttpError, error_response
from shared.web.routing import changes_data

RECHECK_AFTER_S = 1.0
MESSAGE = "A backup is being restored into this server; wait for it to finish, then send this again."

# Writes a restore does not disturb: predictions (POST, but they change nothing) and the restore itself.
UNDISTURBED = ("/predict", "/restore")


class RestoreFlag:
    """Whether a restore holds the server (its lease's key exists, whichever process holds it),
    asked of Redis on the event loop: a thread hop for it had cost each write about 250 us."""

    def __init__(self, url: str, key: str) -> None:
        self._redis = redis.asyncio.Redis.from_url(url)
        self._key = key

    async def running(self) -> bool:
        try:
            return bool(await self._redis.exists(self._key))
        except redis.RedisError:  # the write itself answers 503 when it reaches Redis
            return False

    async def close(self) -> None:
        await self._redis.aclose()


class RestoreGuard:
    """Refuses requests that change data (409 ``restore_in_progress``) while a restore runs."""

    def __init__(self, app: ASGIApp, flag: Callable[[Scope], RestoreFlag]) -> None:
        self.app = app
        self.flag = flag

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _writes(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        flag = self.flag(scope)
        if await flag.running():
            await error_response(409, "restore_in_progress", MESSAGE)(scope, receive, send)
            return
        checked = time.monotonic()

        async def checked_again() -> Message:
            message = await receive()
            ended = message["type"] == "http.request" and not message.get("more_body", False)
            if ended and time.monotonic() - checked > RECHECK_AFTER_S and await flag.running():
                raise HttpError(409, "restore_in_progress", MESSAGE)
            return message

        await self.app(scope, checked_again, send)


def _writes(method: str, path: str) -> bool:
    undisturbed = any(path == p or path.startswith(p + "/") for p in UNDISTURBED)
    return changes_data(method, path) and not undisturbed
