"""The HTTP server every tagsmith process runs: uvicorn with httptools, bounded before any request
reaches an app.

uvicorn's httptools protocol puts no limit on a request's headers and no deadline on their
arrival: 60 MB of short header lines grew a server by 1.5 GB (before authentication), and a
half-sent request line kept its connection open for good. ``BoundedHttpProtocol`` adds, from the
settings:

- ``max_header_bytes``: the request line and headers together; beyond, 431 and the connection
  ends, as a request refused before its body came (below); counted as they arrive, a read at a
  time, so nothing much larger is ever kept;
- ``header_timeout_s``: from a connection's start, or a request's first byte, to the end of its
  headers; beyond, 408 (or a silent close if nothing came) and the connection ends;
- both hold for a request sent behind another (pipelined) while that one is answered: its bytes
  count from the end of the one before, and its headers get their time again once that answer
  ends (they had escaped both: a request line behind a streamed backup grew a server by 200 MB
  and stalled its event loop, and headers sent a byte every 3 s were served after 117 s);
- a request for a full URL (``GET http://name/path``) is for that name: it replaces the Host
  header, which the host check (``origins.py``) judges;
- a request body in a transfer coding other than ``chunked`` alone gets 501 and the connection
  ends (RFC 9112 6.1);
- ``max_connections``: connections open at once; beyond, a new one gets 503 and is closed;
- a request answered before its body has all come (refused early, or cut off for coming too
  slowly), or with a refused request behind it, ends its connection: the answer says
  ``Connection: close``, the server stops answering on it, discards what still comes for
  ``LINGER_S`` so that the client can read the answer, then closes it (uvicorn would otherwise
  keep reading the rest of the body, a byte at a time if the client likes, or close at once,
  resetting a connection that still had bytes coming);
- an answer the client does not read: uvicorn keeps what the socket has not taken, for as long as
  the connection lasts (a hundred connections asking for a 25 MB original and reading nothing
  held 2.4 GB, the connection limit's worth would have held 25 GB). Once it piles up (past the
  transport's high-water mark) it must drain at ``send_min_rate``, each byte read buying its
  time at that rate but at most ``send_timeout_s`` ahead, else the connection is dropped (what
  drains is counted out of the server's buffer and the kernel's send queue together: the kernel
  takes from the buffer in jumps of a megabyte or more, and a client reading steadily at twice the
  minimum rate had seemed stalled and lost its download); and all
  connections together may hold at most ``max_unsent_bytes`` (one alone may hold more), beyond
  which the answer that would pass it is dropped (logged). Dropping frees what the server holds;
  the client still gets what its socket had taken, a cut-off answer.

The body has its own limits in the app (``shared.web.limits``): size, stalls and a minimum rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import struct
import termios
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from shared.core.settings import Settings
from shared.web.limits import paced_deadline
from shared.web.responses import render_json

log = logging.getLogger("tagsmith")


class _Refused(Exception):
    """Raised inside a parser callback to end the request with ``BoundedHttpProtocol.refusal``."""


LINGER_S = 2.0
_OUTQ = getattr(termios, "TIOCOUTQ", None)  # on a TCP socket, Linux's SIOCOUTQ: bytes the peer has not acknowledged


class BoundedHttpProtocol(HttpToolsProtocol):
    max_header_bytes = 16 * 1024
    header_timeout_s = 10.0
    max_connections = 1000
    send_timeout_s = 30.0
    send_min_rate = 16 * 1024
    max_unsent_bytes = 512 * 1024 * 1024

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        self.socket_fd: int | None = sock.fileno() if sock is not None and _OUTQ is not None else None
        self.refusal: tuple[int, str, str] | None = None
        self.request_begun = False  # a byte of a request has come on this connection
        self.ending = False  # answered before its body came: what still comes is discarded
        self.lingering = False  # the end is written; the connection closes after LINGER_S
        self.keep_alive_asked = True  # what the request being parsed asked for
        self.close_after_answer = False  # a request behind the one being answered was refused
        self.in_headers, self.header_bytes_seen = True, 0  # what comes is a request line and headers
        self.began_in_read, self.body_in_read = False, 0  # in the read being parsed: a request began, body bytes
        self.headers_pending = False  # a request has begun and its headers have not all come
        self.headers_ended = False  # a request's headers ended in the read being parsed
        self.header_clock: asyncio.TimerHandle | None = None
        self.send_clock: asyncio.TimerHandle | None = None
        self.send_deadline, self.unsent = 0.0, 0
        if len(self.connections) > self.max_connections:
            self._answer(503, "too_many_connections", "The server has too many open connections; try again shortly.")
            return
        self._start_header_clock()

    def data_received(self, data: bytes) -> None:
        if self.ending:
            return
        in_headers, self.headers_ended, self.began_in_read, self.body_in_read = self.in_headers, False, False, 0
        super().data_received(data)
        # What of this read is a request line and headers that have not ended: all of it, if it began
        # in them; if a request began within it (after the end of the one before), all but the
        # body bytes before, which may count the headers of that one too (a pipelined request's
        # first bytes had gone uncounted, and 30 KB of its headers passed a 16 KiB limit).
        if self.in_headers and not self.headers_ended and (in_headers or self.began_in_read):
            self.header_bytes_seen += len(data) - self.body_in_read
            if self.header_bytes_seen > self.max_header_bytes:
                self._answer(*self._headers_too_large())

    def on_body(self, body: bytes) -> None:
        self.body_in_read += len(body)
        super().on_body(body)

    def on_response_complete(self) -> None:
        # A request behind this answer was refused, or its own body has not all come: what was
        # written is sent first, what still comes is discarded (uvicorn's close has lingered already).
        if self.close_after_answer or (self.cycle is not None and self.cycle.more_body and not self.transport.is_closing()):
            self.server_state.total_requests += 1
            self._end_lingering()
            return
        super().on_response_complete()
        if self.headers_pending and not self.transport.is_closing():  # the next request's began meanwhile:
            self._stop_header_clock()  # its headers get their time from now
            self._start_header_clock()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_clock()
        self._stop_send_clock()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        """The answer piles up unsent: dropped at once if all connections together hold too much
        (unless this one alone holds any: one answer larger than that still goes out), else timed.
        The newcomer is dropped, as a body past its budget is refused: the connections holding the
        budget must keep reading at ``send_min_rate`` or go."""
        super().pause_writing()
        held = self.transport.get_write_buffer_size()
        unsent = sum(c.transport.get_write_buffer_size() for c in self.connections if not c.transport.is_closing())
        if unsent > self.max_unsent_bytes and unsent > held:
            log.warning("answers held unread past max_unsent_bytes (%d bytes): dropping a connection holding %d", unsent, held)
            self.transport.abort()
            return
        self.unsent = self._unread()
        self.send_deadline = self.loop.time() + self.send_timeout_s
        self._stop_send_clock()
        self.send_clock = self.loop.call_later(1.0, self._check_sending)

    def resume_writing(self) -> None:
        self._stop_send_clock()
        super().resume_writing()

    def _check_sending(self) -> None:
        """Every second while writing is paused: what the client read since buys its time at
        ``send_min_rate``, at most ``send_timeout_s`` ahead; past the deadline the connection goes."""
        now, unsent = self.loop.time(), self._unread()
        read = max(self.unsent - unsent, 0)
        self.send_deadline = paced_deadline(self.send_deadline, read, self.send_min_rate, now, self.send_timeout_s)
        self.unsent = unsent
        if now >= self.send_deadline:
            self.send_clock = None
            self.transport.abort()
            return
        self.send_clock = self.loop.call_later(1.0, self._check_sending)

    def _unread(self) -> int:
        """Bytes of the answer the client has not read: in the transport's buffer, and in the
        kernel's send queue where the system says (Linux)."""
        unread = self.transport.get_write_buffer_size()
        if self.socket_fd is not None:
            try:
                unread += struct.unpack("i", fcntl.ioctl(self.socket_fd, _OUTQ, b"\0\0\0\0"))[0]  # type: ignore[arg-type]
            except OSError:  # not a TCP socket, or closed meanwhile
                self.socket_fd = None
        return unread

    def _stop_send_clock(self) -> None:
        if self.send_clock is not None:
            self.send_clock.cancel()
            self.send_clock = None

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.request_begun = self.headers_pending = self.began_in_read = True
        self.headers_ended = False  # (the one before may have ended in the same read)
        if self.header_clock is None:  # a request on a kept-alive connection: its headers get the same time
            self._start_header_clock()

    def on_headers_complete(self) -> None:
        self._stop_header_clock()
        self.in_headers, self.header_bytes_seen, self.headers_pending, self.headers_ended = False, 0, False, True
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.max_header_bytes:  # all of it came in one piece (else data_received refused it)
            self.refusal = self._headers_too_large()
            raise _Refused
        codings = [value for name, value in self.headers if name == b"transfer-encoding"]
        if codings and b",".join(codings).strip().lower() != b"chunked":
            # Any other coding (gzip, "xchunked", chunked twice) had been taken as a body read until
            # the connection closed: a proxy that reads it otherwise could smuggle a request in it.
            self.refusal = (501, "not_implemented", "The server takes a request body whole (Content-Length) or "
                            "chunked (Transfer-Encoding: chunked), in no other transfer coding.")
            raise _Refused
        self._host_of_absolute_target()
        super().on_headers_complete()
        if self.cycle is not None:
            # Until the body has all come, an answer says ``Connection: close`` (uvicorn writes it
            # when keep_alive is off) and its connection ends lingering: a keep-alive client not
            # told so sent its next request on the ending connection and got no answer.
            self.keep_alive_asked, self.cycle.keep_alive = self.cycle.keep_alive, False
            self.cycle.transport = _LingeringClose(self, self.cycle)  # type: ignore[assignment]  # a Transport by its methods

    def _host_of_absolute_target(self) -> None:
        """A request for ``http://name/path`` is for ``name``, whatever its Host header says (RFC 9112
        3.2.2): that authority replaces the header, so the host check judges it (it had checked the
        header alone, and ``GET http://rebound.evil.example/custom/tags`` with ``Host: localhost``
        passed)."""
        if self.url.startswith((b"/", b"*")):
            return
        try:
            target = httptools.parse_url(self.url)
        except httptools.HttpParserInvalidURLError:
            return  # uvicorn answers 400 for it
        if target.host:
            host = b"[%s]" % target.host if b":" in target.host else target.host  # an IPv6 address keeps its brackets
            authority = host + (b":%d" % target.port if target.port else b"")
            self.headers[:] = [(name, value) for name, value in self.headers if name != b"host"]
            self.headers.append((b"host", authority))

    def on_message_complete(self) -> None:
        self.in_headers = True  # what comes next is the next request's line and headers
        super().on_message_complete()
        if self.cycle is not None and not self.ending:
            self.cycle.keep_alive = self.keep_alive_asked  # the body has come: as the client asked

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to anything the parser refused, a refusal of ours among them."""
        status, code, message = self.refusal or (400, "bad_request", msg)
        self._answer(status, code, message)

    def _unsupported_upgrade_warning(self) -> None:
        """Nothing: no route takes a WebSocket (``ws="none"``), so an upgrade request is answered as
        any HTTP request; uvicorn's two warnings a request (advising to install a WebSocket
        library) were log noise any client could make."""

    def _headers_too_large(self) -> tuple[int, str, str]:
        return 431, "headers_too_large", f"The request line and headers are larger than {self.max_header_bytes} bytes."

    def _start_header_clock(self) -> None:
        self.header_clock = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _stop_header_clock(self) -> None:
        if self.header_clock is not None:
            self.header_clock.cancel()
            self.header_clock = None

    def _headers_too_slow(self) -> None:
        self.header_clock = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # the one before is being answered: the clock starts again when that ends
        if not self.request_begun:  # not a byte of a request: an idle connection
            self.transport.close()
            return
        self._answer(408, "header_timeout", f"The request's headers took longer than {self.header_timeout_s:g} s.")

    def _answer(self, status: int, code: str, message: str) -> None:
        """A JSON error, then the connection ends: nothing more is read from it. If the request
        before (the refused one came behind it) is still being answered, that answer ends first and
        then the connection closes, without the error: it would go out as that request's answer, or
        in the middle of it (and, the connection cut at once, that request's writes had failed)."""
        self._stop_header_clock()
        if self.ending:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.ending = self.close_after_answer = True  # nothing more is read, queued requests are not
            self.pipeline.clear()  # run, and the connection closes once the answer going out has ended
            self.cycle.keep_alive = False  # which says so, if it has not started
            return
        body = render_json({"error": code, "message": message})
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [b"content-type: application/json\r\n", b"content-length: ", str(len(body)).encode(), b"\r\n",
                 b"connection: close\r\n\r\n", body]
        if not self.transport.is_closing():
            self.transport.write(b"".join(head))
            if status == 503:  # refused on connecting: closed at once, lingering would hold a connection more
                self.transport.close()
            else:
                self._end_lingering()

    def _end_lingering(self) -> None:
        """The answer written so far is flushed and the client sees the end, while what it still
        sends is discarded for ``LINGER_S``: closed with its request unread, the connection would
        be reset, and a client still sending could lose the answer."""
        self.ending = True
        if self.lingering:
            return
        self.lingering = True
        with contextlib.suppress(OSError, RuntimeError):
            self.transport.write_eof()
            self.transport.resume_reading()  # paused behind a pipelined request: what comes must be read to be discarded
        self.loop.call_later(LINGER_S, self.transport.close)


class _LingeringClose:
    """A request's view of the connection: uvicorn closes it when an answer that says ``Connection:
    close`` ends, and while the request's body is still coming (or a request behind it was
    refused) that close lingers (``_end_lingering``): closed at once with bytes unread, the
    connection was reset, and a client still sending lost the answer."""

    def __init__(self, protocol: BoundedHttpProtocol, cycle: Any) -> None:
        self._protocol, self._cycle, self._transport = protocol, cycle, cycle.transport
        self.write, self.is_closing = self._transport.write, self._transport.is_closing  # what else the cycle uses

    def close(self) -> None:
        if not self._transport.is_closing() and (self._protocol.ending or self._cycle.more_body):
            self._protocol._end_lingering()
        else:
            self._transport.close()


def bounded_protocol(settings: Settings) -> type[BoundedHttpProtocol]:
    """The protocol class with this process's limits."""
    return type("BoundedHttpProtocol", (BoundedHttpProtocol,), {
        "max_header_bytes": settings.max_header_bytes,
        "header_timeout_s": settings.header_timeout_s,
        "max_connections": settings.max_connections,
        "send_timeout_s": settings.body_read_timeout_s,
        "send_min_rate": settings.body_min_rate,
        "max_unsent_bytes": settings.max_unsent_bytes,
    })


def server_config(app: Any, settings: Settings) -> uvicorn.Config:
    """uvicorn for ``app`` on the settings' address, with the bounded protocol; tagsmith's JSON logs
    and access log replace uvicorn's own."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=bounded_protocol(settings),
        ws="none",  # no route takes a WebSocket: an upgrade request is an HTTP request like any other
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]  # a float works as well
        log_config=None,
        access_log=False,
    )
