"""Limits on request bodies: size per path, how long a body may take, and how many bytes of
bodies a process holds at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.core.settings import Settings
from shared.web.errors import HttpError, error_response


def paced_deadline(deadline: float, size: int, rate: float, now: float, timeout: float) -> float:
    """The deadline of a transfer kept at ``rate`` bytes/s once ``size`` more bytes have moved: each
    buys its time at that rate, but the deadline is never more than ``timeout`` after ``now`` (a
    transfer that came fast cannot bank time and then drip). Request bodies and unread answers."""
    return min(deadline + size / rate, now + timeout)


class BodyBudget:
    """Request-body bytes held at once by all requests of a process: a request whose body would
    pass it gets 503 ``busy``. A declared Content-Length is taken whole when the endpoint starts
    reading, other bodies as they arrive; all is given back when the request ends. One for the
    bodies held in memory (twenty slow 63 MB uploads had held 1.3 GB), one for those written to
    temporary files (``SPOOLED_PATHS``: concurrent restores had each spooled up
    to a whole ``max_backup_bytes`` to disk)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        self._lock = threading.Lock()

    def take(self, size: int) -> bool:
        with self._lock:
            if self.in_use + size > self.capacity:
                return False
            self.in_use += size
            return True

    def give_back(self, size: int) -> None:
        with self._lock:
            self.in_use -= size


class BodyLimit:
    """Refuses request bodies over a per-path byte limit, whether or not Content-Length is sent,
    and bodies that come too slowly (408 ``body_timeout``): waiting more than
    ``body_read_timeout_s`` for the next piece, or falling behind ``body_min_rate`` (a byte every
    few seconds would otherwise hold a request open without end). Each piece buys the time it
    would take at that rate, but no more than ``body_read_timeout_s`` ahead of the moment it came:
    a body that came fast at first cannot bank hours of time and then drip, holding its bytes."""

    def __init__(
        self, app: ASGIApp, settings: Callable[[Scope], Settings], budget: Callable[[Scope], BodyBudget],
        spool_budget: Callable[[Scope], BodyBudget],
    ) -> None:
        self.app = app
        self.settings = settings
        self.budget = budget
        self.spool_budget = spool_budget

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = self.settings(scope)
        spooled = scope["path"].rstrip("/") in SPOOLED_PATHS  # written to a temporary file, not held in memory
        budget = (self.spool_budget if spooled else self.budget)(scope)
        # A body larger than the whole budget could never be taken: too large, not "busy, try again".
        limit = min(body_limit_for_path(settings, scope["path"]), budget.capacity)
        declared = next((int(value) for name, value in scope["headers"] if name == b"content-length" and value.isdigit()), None)
        if declared is not None and declared > limit:
            await error_response(413, "too_large", f"The request body is larger than {limit} bytes.")(scope, receive, send)
            return
        received, reserved, complete, timeout = 0, 0, False, settings.body_read_timeout_s
        deadline: float | None = None  # the clock starts when the endpoint first reads the body
        busy = ("The server is receiving as many backups as it may hold on disk at once" if spooled
                else "The server holds too many uploads at once") + "; try again shortly."

        async def limited_receive() -> Message:
            nonlocal received, reserved, complete, deadline
            if complete:  # after the body only a disconnect can come: no deadline
                return await receive()
            if deadline is None:  # (work before it, such as a restore's clean-up, is not the client's delay)
                deadline = time.monotonic() + timeout
                # A declared length is taken whole, at once: taken a piece at a time, concurrent
                # bodies that together pass the budget had all been refused halfway.
                if declared and not budget.take(declared):
                    raise HttpError(503, "busy", busy)
                reserved = declared or 0
            allowed = deadline - time.monotonic()  # at most ``timeout``: no piece buys more
            too_slow = HttpError(408, "body_timeout", f"The request body stalled for {timeout:g} s or came slower "
                                 f"than {settings.body_min_rate} bytes/s.")
            if allowed <= 0:
                raise too_slow
            try:
                with anyio.fail_after(allowed):
                    message = await receive()
            except TimeoutError:
                raise too_slow from None
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            size = len(message.get("body", b""))
            if received + size > limit:  # before the budget: a body past the limit is too large, not "busy"
                raise HttpError(413, "too_large", f"The request body is larger than {limit} bytes.")
            beyond = max(0, received + size - max(received, reserved))  # past a declared length, if any
            if beyond and not budget.take(beyond):
                raise HttpError(503, "busy", busy)
            received += size
            deadline = paced_deadline(deadline, size, settings.body_min_rate, time.monotonic(), timeout)
            return message

        try:
            await self.app(scope, limited_receive, send)
        finally:
            budget.give_back(max(received, reserved))


# Bodies their endpoint writes to a temporary file as they arrive (a backup to restore): counted
# against the bytes on disk (``BodyBudget``), not those held in memory.
SPOOLED_PATHS = {"/restore"}


def body_limit_for_path(settings: Settings, path: str) -> int:
    """State archives, backups and batches may be larger than one image upload; 64 KiB covers multipart framing."""
    limits = {"/set_state": settings.max_archive_bytes, "/custom/add_many": settings.max_batch_bytes,
              "/restore": settings.max_backup_bytes}
    return limits.get(path.rstrip("/"), settings.max_upload_bytes) + 64 * 1024
