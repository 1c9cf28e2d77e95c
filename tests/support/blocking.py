"""A guard that catches blocking I/O on the event loop: a Redis command or an object-store call made
from the thread that runs the event loop (an ``async def`` endpoint that forgot
``run_in_threadpool``) stalls every other request for as long as it takes.

While installed, such a call is recorded and raises ``BlockingOnEventLoop``; the same calls from
the threadpool, a worker or the test itself pass.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any

import pytest
import redis.connection

from shared.data.store import LocalStore, S3Store

GUARDED: list[tuple[Any, str]] = [
    (redis.connection.AbstractConnection, "send_packed_command"),
    *((store, method) for store in (LocalStore, S3Store) for method in ("put", "get", "exists", "delete", "list", "ping")),
]


class BlockingOnEventLoop(AssertionError):
    """A blocking call was made on the event loop's thread."""


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@contextmanager
def blocking_guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Install the guard; yields the list of violations (where each blocking call came from)."""
    violations: list[str] = []

    def guarded(original: Callable[..., Any], name: str) -> Callable[..., Any]:
        @wraps(original)
        def call(*args: Any, **kwargs: Any) -> Any:
            if _on_event_loop():
                where = "".join(traceback.format_stack(limit=12)[:-1])
                violations.append(f"{name} on the event loop:\n{where}")
                raise BlockingOnEventLoop(f"{name} called on the event loop")
            return original(*args, **kwargs)

        return call

    for owner, method in GUARDED:
        monkeypatch.setattr(owner, method, guarded(getattr(owner, method), f"{owner.__name__}.{method}"))
    yield violations
