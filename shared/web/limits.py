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


# A body keeps the room its Content-Length took while it comes at least this fast; in its first
# seconds, before it can show its pace, only this much beyond what it has sent. The rest of its room
# goes to a body that needs it, the slowest's first.
KEPT_RATE = 1024 * 1024  # bytes/s
KEPT_GRACE_S = 2.0


class BodyHold:
    """One request body's share of a ``BodyBudget``: the bytes it has received, and the room its
    declared length took (``reserved``: counted whether or not they have come)."""

    def __init__(self, reserved: int, now: float) -> None:
        self.reserved, self.received, self.started = reserved, 0, now

    @property
    def held(self) -> int:
        return max(self.received, self.reserved)

    def kept(self, now: float) -> int:
        """The room no other body may take from it: all it took while it keeps ``KEPT_RATE``; in its
        first ``KEPT_GRACE_S``, what it has sent and that many seconds more at that rate; else what
        it has sent. (Declarations sending nothing, one every 0.1 s, had each kept 256 MiB for its
        first seconds: every upload and prediction was refused.)"""
        elapsed = now - self.started
        if elapsed < KEPT_GRACE_S:
            return min(self.held, self.received + int(KEPT_RATE * KEPT_GRACE_S))
        return self.held if self.received >= KEPT_RATE * (elapsed - KEPT_GRACE_S) else self.received

    def rate(self, now: float) -> float:
        return self.received / max(now - self.started, 1e-3)


class BodyBudget:
    """Request-body bytes held at once by all requests of a process: a request whose body would
    pass it gets 503 ``busy``. One for the bodies held in memory (twenty slow 63 MB uploads had
    held 1.3 GB), one for those written to temporary files (``SPOOLED_PATHS``: concurrent restores
    had each spooled up to a whole ``max_backup_bytes`` to disk).

    A declared Content-Length takes its room whole when the endpoint starts reading: taken a piece
    at a time, concurrent bodies that together passed the budget had all been refused halfway. A
    body needing room (a newcomer, or a piece beyond its room) takes it from bodies that do not keep
    it (``BodyHold.kept``), the slowest first; they go on, taking room as their bytes come. Two
    bodies declaring 256 MiB and sent at 16 KiB/s had held the whole budget for hours."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0  # what every hold holds together
        self._holds: set[BodyHold] = set()
        self._lock = threading.Lock()

    def hold(self, declared: int, now: float) -> BodyHold | None:
        """Room for a body of ``declared`` bytes (0: not declared), or None if there is none."""
        with self._lock:
            if not self._make_room(declared, now, None):
                return None
            hold = BodyHold(declared, now)
            self._holds.add(hold)
            self.in_use += declared
            return hold

    def take(self, hold: BodyHold, size: int, now: float) -> bool:
        """Count ``size`` more bytes of the body: within its room, or in room free or made."""
        with self._lock:
            beyond = max(0, hold.received + size - hold.held)
            if beyond and not self._make_room(beyond, now, hold):
                return False
            hold.received += size
            self.in_use += beyond
            return True

    def _make_room(self, needed: int, now: float, asking: BodyHold | None) -> bool:
        free = self.capacity - self.in_use
        if needed <= free:
            return True
        others = sorted((h for h in self._holds if h is not asking and h.held > h.kept(now)), key=lambda h: h.rate(now))
        if needed > free + sum(h.held - h.kept(now) for h in others):
            return False
        for slow in others:  # the slowest first
            if needed <= free:
                break
            kept = slow.kept(now)
            freed, slow.reserved = slow.held - kept, kept
            free, self.in_use = free + freed, self.in_use - freed
        return True

    def release(self, hold: BodyHold) -> None:
        with self._lock:
            if hold in self._holds:
                self._holds.discard(hold)
                self.in_use -= hold.held


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
            refusal = too_large(settings, scope["path"], limit)
            await error_response(refusal.status, refusal.code, refusal.message)(scope, receive, send)
            return
        received, complete, timeout = 0, False, settings.body_read_timeout_s
        deadline: float | None = None  # the clock starts when the endpoint first reads the body
        hold: BodyHold | None = None
        busy = ("The server is receiving as many backups as it may hold on disk at once" if spooled
                else "The server holds too many uploads at once") + "; try again shortly."

        async def limited_receive() -> Message:
            nonlocal received, complete, deadline, hold
            if complete:  # after the body only a disconnect can come: no deadline
                return await receive()
            if deadline is None:  # (work before it, such as a restore's clean-up, is not the client's delay)
                now = time.monotonic()
                deadline = now + timeout
                hold = budget.hold(declared or 0, now)  # a declared length takes its room whole
                if hold is None:
                    raise HttpError(503, "busy", busy)
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
                raise too_large(settings, scope["path"], limit)
            assert hold is not None
            if not budget.take(hold, size, time.monotonic()):
                raise HttpError(503, "busy", busy)
            received += size
            deadline = paced_deadline(deadline, size, settings.body_min_rate, time.monotonic(), timeout)
            return message

        try:
            await self.app(scope, limited_receive, send)
        finally:
            if hold is not None:
                budget.release(hold)


# Bodies their endpoint writes to a temporary file as they arrive (a backup to restore): counted
# against the bytes on disk (``BodyBudget``), not those held in memory.
SPOOLED_PATHS = {"/restore"}


# The setting that bounds each path's body: state archives, backups and batches may be larger than
# one image upload.
_BODY_SETTINGS = {"/set_state": "max_archive_bytes", "/custom/add_many": "max_batch_bytes", "/restore": "max_backup_bytes"}
FRAMING_BYTES = 64 * 1024  # the multipart form around the file


def body_limit_for_path(settings: Settings, path: str) -> int:
    return int(getattr(settings, _BODY_SETTINGS.get(path.rstrip("/"), "max_upload_bytes"))) + FRAMING_BYTES


def too_large(settings: Settings, path: str, limit: int) -> HttpError:
    """413 for a body over ``limit``, naming the setting that makes it (an operator's first question)."""
    name = _BODY_SETTINGS.get(path.rstrip("/"), "max_upload_bytes")
    if limit < body_limit_for_path(settings, path):  # the bytes every body together may hold
        name = "max_body_bytes_in_flight"
    return HttpError(413, "too_large", f"The request body is larger than {limit} bytes "
                     f"(TAGSMITH_{name.upper()} is {getattr(settings, name)}).")
