"""What a connection may cost before a request reaches the app, on a real ``tagsmith serve``: header
size, header and body deadlines, and how many connections are open at once. Each was unbounded:
60 MB of header lines grew the server by 1.5 GB, half-sent requests stayed open for good, a byte
every 20 s kept a body open past its 30 s setting."""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import psutil
import pytest
import requests
import uvicorn
from PIL import Image

from infra.embedded import free_port
from shared.core.settings import Settings
from shared.web.server import server_config
from tests.support.servers import TagsmithServer, serving

pytestmark = pytest.mark.integration  # starts a tagsmith serve

LIMITS = {"TAGSMITH_HEADER_TIMEOUT_S": "1", "TAGSMITH_BODY_READ_TIMEOUT_S": "2", "TAGSMITH_MAX_CONNECTIONS": "12",
          "TAGSMITH_MAX_BODY_BYTES_IN_FLIGHT": "3000000", "TAGSMITH_MAX_BACKUP_BYTES": "3000000"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TagsmithServer]:
    with serving(tmp_path_factory.mktemp("connections") / "data", LIMITS) as instance:
        yield instance


def connect(server: TagsmithServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def answer_of(sock: socket.socket) -> tuple[bytes, bool]:
    """What the server sent until it closed the connection (or 10 s passed), and whether it closed."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except TimeoutError:
        return b"".join(chunks), False
    except ConnectionResetError:
        pass
    return b"".join(chunks), True


def status_and_code(answer: bytes) -> tuple[int, str]:
    head, _, body = answer.partition(b"\r\n\r\n")
    code = body.split(b'"error":"')[1].split(b'"')[0].decode() if b'"error":"' in body else ""
    return int(head.split(b" ")[1]), code


def rss_mb(server: TagsmithServer) -> float:
    assert server.process is not None
    return psutil.Process(server.process.pid).memory_info().rss / 2**20


def send_until_cut(sock: socket.socket, chunk: bytes, seconds: float = 10) -> float:
    """Send ``chunk`` over and over until the server ends the connection (or ``seconds`` pass):
    the seconds it took."""
    started = time.monotonic()
    try:
        while time.monotonic() - started < seconds:
            sock.sendall(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return time.monotonic() - started


def test_headers_over_the_limit_get_431_and_are_never_kept(server: TagsmithServer) -> None:
    before = rss_mb(server)
    sock = connect(server)
    sock.sendall(b"GET /custom/tags HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    took = send_until_cut(sock, b"X-Filler: " + b"a" * 1000 + b"\r\n")  # short header lines, as long as the server reads them
    answer, closed = answer_of(sock)
    assert status_and_code(answer) == (431, "headers_too_large") and closed
    assert took < 5  # refused at 16 KB, then discarded for LINGER_S (2 s) and closed
    assert rss_mb(server) - before < 50


def test_a_websocket_upgrade_is_an_http_request_like_any_other(server: TagsmithServer) -> None:
    """No route takes a WebSocket; an upgrade request used to get uvicorn's bare 403, past the host,
    API-key and same-origin checks, the access log and the metrics."""
    upgrade = (b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")
    for host, expected in ((b"evil.example", (400, "host_not_allowed")), (b"127.0.0.1", (404, "not_found"))):
        sock = connect(server)
        sock.settimeout(2)  # the answer keeps the connection open
        sock.sendall(b"GET /nowhere HTTP/1.1\r\nHost: " + host + b"\r\n" + upgrade + b"\r\n")
        answer, _ = answer_of(sock)
        sock.close()
        assert status_and_code(answer) == expected, answer[:300]
        assert b"x-content-type-options: nosniff" in answer.lower()
    assert "WebSocket" not in server.log.read_text(errors="replace")  # no advice to install a WebSocket library


def test_a_client_still_sending_when_refused_reads_the_answer(server: TagsmithServer) -> None:
    """Closed with the rest of the request unread, the connection was reset: a client still
    sending got an error instead of the 431 (curl: "Send failure: Connection reset by peer")."""
    sock = connect(server)
    sock.sendall(b"GET /custom/tags HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 40_000)
    time.sleep(0.3)  # refused by now
    sock.sendall(b"a" * 5_000_000)  # what it still sends is discarded (for 2 s), not answered with a reset
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    assert status_and_code(b"".join(chunks)) == (431, "headers_too_large")


@pytest.mark.parametrize("path", ["/custom/add", "/restore"])
def test_a_client_still_sending_when_the_app_refused_reads_the_answer(server: TagsmithServer, path: str) -> None:
    """Answered by the app before the body came (413 by its length here; 401 or 409 alike) and
    marked ``Connection: close``, the connection was closed at once with the body unread: reset,
    and a client still sending got "connection reset" instead of the refusal."""
    sock = connect(server)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                 "Content-Length: 90000000\r\n\r\n".encode() + b"x" * 100_000)
    time.sleep(0.3)  # answered by now
    sock.sendall(b"x" * 5_000_000)  # discarded while it comes, not answered with a reset (curl gave up there)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    answer = b"".join(chunks)
    assert status_and_code(answer) == (413, "too_large") and b"\r\nconnection: close" in answer.lower()


def test_requests_whose_headers_do_not_arrive_in_time_are_closed(server: TagsmithServer) -> None:
    idle, half = connect(server), connect(server)
    half.sendall(b"GET /custom/tags HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow:")  # and nothing more
    started = time.monotonic()
    answer, closed = answer_of(half)
    assert status_and_code(answer) == (408, "header_timeout") and closed
    assert answer_of(idle) == (b"", True)  # a connection that never sent a byte: closed without a word
    assert time.monotonic() - started < 5
    kept_alive = connect(server)  # a request, then the first bytes of another, then nothing
    kept_alive.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /health HT")
    answer, closed = answer_of(kept_alive)
    assert answer.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 408" in answer and closed


def drip_until_answered(sock: socket.socket) -> tuple[bytes, float]:
    """Send a byte every half second until the server answers (15 s at most): its answer, and the
    seconds it took."""
    started, refused = time.monotonic(), b""
    sock.settimeout(0.5)
    while time.monotonic() - started < 15 and not refused:
        try:
            sock.sendall(b"-")
            refused = sock.recv(65536)
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            break
    took = time.monotonic() - started
    sock.settimeout(10)
    return refused + answer_of(sock)[0], took


def test_a_body_sent_a_byte_at_a_time_is_cut_off_after_its_deadline(server: TagsmithServer) -> None:
    """Each byte comes well within the 2 s stall limit, but the body as a whole is far too slow."""
    sock = connect(server)
    sock.sendall(b"POST /custom/add?image_id=slow HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n"
                 b'--b\r\nContent-Disposition: form-data; name="data"; filename="x.jpg"\r\n\r\n')
    refused, took = drip_until_answered(sock)
    assert status_and_code(refused) == (408, "body_timeout"), refused
    assert took < 4  # the 2 s setting and the minimum rate, not 15 s of drip


def test_a_body_that_came_fast_cannot_bank_time_and_then_drip(server: TagsmithServer) -> None:
    """1 MB at once, then a byte now and then: the rate was once counted over the whole body, so
    the first megabyte bought a minute of dripping (267 MB bought hours, holding their memory)."""
    sock = connect(server)
    sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 2000000\r\n\r\n"
                 b'--b\r\nContent-Disposition: form-data; name="data"; filename="x.jpg"\r\n\r\n' + b"-" * 1_000_000)
    refused, took = drip_until_answered(sock)
    assert status_and_code(refused) == (408, "body_timeout"), refused
    assert took < 5  # the 2 s setting ahead of the last piece at most, not 61 s of credit


def test_connections_beyond_the_limit_get_503(server: TagsmithServer) -> None:
    held = [connect(server) for _ in range(12)]
    try:
        time.sleep(0.2)
        extra = connect(server)
        answer, closed = answer_of(extra)
        assert status_and_code(answer) == (503, "too_many_connections") and closed
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    sock = connect(server)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert answer_of(sock)[0].startswith(b"HTTP/1.1 200")  # room again once they closed


def test_a_request_answered_before_its_body_came_ends_its_connection(server: TagsmithServer) -> None:
    """It had stayed open as long as the client went on sending a byte now and then."""
    sock = connect(server)
    sock.sendall(b"POST /set_state HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
                 b"Content-Length: 1000000\r\n\r\nZ")
    sock.settimeout(0.5)
    started, answer, closed = time.monotonic(), b"", False
    while time.monotonic() - started < 15 and not closed:
        try:
            sock.sendall(b"Z")
            chunk = sock.recv(65536)
            answer += chunk
            closed = not chunk
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            closed = True
    assert status_and_code(answer) == (400, "missing_field") and closed
    assert time.monotonic() - started < 6


def test_one_header_line_that_never_ends_is_cut_off_too(server: TagsmithServer) -> None:
    """Counted only once a line ended, the limit let one endless line through (60 MB in 10 s)."""
    sock = connect(server)
    sock.sendall(b"GET /custom/tags HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: ")
    took = send_until_cut(sock, b"a" * 65536)
    answer, closed = answer_of(sock)
    assert status_and_code(answer) == (431, "headers_too_large") and closed
    assert took < 5  # refused at 16 KB, then discarded for LINGER_S (2 s) and closed


@pytest.mark.parametrize(("path", "length", "refusal"), [("/set_state", 2_900_000, "invalid_archive"),
                                                         ("/restore", 2_900_000, "invalid_backup")])
def test_bodies_held_at_once_stay_within_their_budget(server: TagsmithServer, path: str, length: int, refusal: str) -> None:
    """Twenty slow 63 MB uploads had held 1.3 GB: past the budget (3 MB here) a body is refused. So
    are backups written to disk: concurrent restores had each spooled up to a whole
    ``MAX_BACKUP_BYTES`` (4 GiB) to a temporary file; together they may now hold that much (3 MB here)."""
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {length}\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"data\"; filename=\"s\"\r\n\r\n").encode()
    first, second = connect(server), connect(server)
    first.sendall(head + b"x" * 2_000_000)  # held: the body has not all come
    time.sleep(0.5)
    second.sendall(head)
    try:
        second.sendall(b"y" * 2_000_000)
    except (BrokenPipeError, ConnectionResetError):
        pass
    answer, _ = answer_of(second)
    assert status_and_code(answer) == (503, "busy")
    first.close()
    time.sleep(0.5)
    body = b'--b\r\nContent-Disposition: form-data; name="data"; filename="s"\r\n\r\n' + b"z" * 100 + b"\r\n--b--\r\n"
    sock = connect(server)  # the budget is given back when a request ends
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: multipart/"
                 f"form-data; boundary=b\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    assert status_and_code(answer_of(sock)[0]) == (400, refusal)  # a bad upload, not busy


def test_a_body_dripping_in_keeps_no_room_that_others_need(server: TagsmithServer) -> None:
    """Two bodies declaring 256 MiB and sent at 16 KiB/s (fast enough for their deadlines) had held
    the whole budget for hours: every upload and prediction got 503 "busy". A body slower than
    ``KEPT_RATE`` now gives up the room its unsent bytes took to one that needs it."""
    part = b'--b\r\nContent-Disposition: form-data; name="data"; filename="s"\r\n\r\n'
    def head(length: int) -> bytes:
        return (f"POST /set_state HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: multipart/"
                f"form-data; boundary=b\r\nContent-Length: {length}\r\n\r\n").encode()

    body = part + b"z" * 2_500_000 + b"\r\n--b--\r\n"
    drip, stop = connect(server), threading.Event()
    drip.sendall(head(2_900_000) + part)  # nearly all of the budget (3 MB here)

    def dripping() -> None:
        with contextlib.suppress(OSError):
            while not stop.wait(0.25):
                drip.sendall(b"x" * 8192)  # 32 KiB/s: above the minimum rate, far below KEPT_RATE

    thread = threading.Thread(target=dripping)
    thread.start()
    try:
        time.sleep(3.5)  # past the first seconds, in which any body may be slow
        with connect(server) as sock:
            sock.sendall(head(len(body)) + body)
            assert status_and_code(answer_of(sock)[0]) == (400, "invalid_archive")  # judged, not "busy"
    finally:
        stop.set()
        thread.join()
        drip.close()


def test_a_body_that_could_never_be_taken_is_too_large_not_busy(server: TagsmithServer) -> None:
    """A body larger than the whole budget (3 MB here), or sent chunked past its limit, had got 503
    "busy, try again shortly" on an idle server, again and again; a backup just under
    ``MAX_BACKUP_BYTES`` too (the disk budget held that much, the limit 64 KiB more)."""
    head = "Host: 127.0.0.1\r\nConnection: close\r\nContent-Type: multipart/form-data; boundary=b\r\n"
    with connect(server) as sock:  # within /custom/add's 25 MiB, beyond what the process holds at once
        sock.sendall(f"POST /custom/add HTTP/1.1\r\n{head}Content-Length: 5000000\r\n\r\n".encode())
        answer = answer_of(sock)[0]
    assert status_and_code(answer) == (413, "too_large") and b"3000000 bytes" in answer
    assert b"(TAGSMITH_MAX_BODY_BYTES_IN_FLIGHT is 3000000)" in answer  # not the upload limit, which it is within
    for path in ("/restore", "/custom/add"):
        with connect(server) as sock:
            part = b'--b\r\nContent-Disposition: form-data; name="data"; filename="s"\r\n\r\n'
            sock.sendall(f"POST {path} HTTP/1.1\r\n{head}Transfer-Encoding: chunked\r\n\r\n{len(part):x}\r\n".encode()
                         + part + b"\r\n")
            send_until_cut(sock, b"10000\r\n" + b"x" * 0x10000 + b"\r\n", seconds=5)
            assert status_and_code(answer_of(sock)[0]) == (413, "too_large"), path
    body = b'--b\r\nContent-Disposition: form-data; name="data"; filename="s"\r\n\r\n'
    body += b"x" * (3_000_000 - 10) + b"\r\n--b--\r\n"  # a backup just under MAX_BACKUP_BYTES, framed past it
    assert len(body) > 3_000_000
    with connect(server) as sock:
        sock.sendall(f"POST /restore HTTP/1.1\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        assert status_and_code(answer_of(sock)[0]) == (400, "invalid_archive")  # judged (not a tar), not busy


@pytest.fixture(scope="module")
def answering(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TagsmithServer, bytes]]:
    """A server whose answers may pile up unread 3 MB in all, for 2 s (headers: 0.5 s), and a stored image of 6.3 MB
    (noise: it does not compress), more than a socket here takes (4 MB), as uploaded."""
    limits = {"TAGSMITH_BODY_READ_TIMEOUT_S": "2", "TAGSMITH_MAX_UNSENT_BYTES": "3000000", "TAGSMITH_HEADER_TIMEOUT_S": "0.5"}
    pixels = np.random.default_rng(7).integers(0, 256, (1450, 1450, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG", compress_level=1)
    with serving(tmp_path_factory.mktemp("answers") / "data", limits) as instance:
        answer = requests.post(instance.base + "/custom/add", params={"image_id": "unread"},
                               files={"data": ("unread.png", out.getvalue())}, timeout=30)
        assert answer.status_code == 201, answer.text
        yield instance, out.getvalue()


def ask_without_reading(server: TagsmithServer, path: str) -> socket.socket:
    """A GET whose answer the client does not read (a small receive window: the server keeps the rest)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return sock


def test_an_answer_read_steadily_above_the_minimum_rate_comes_whole(answering: tuple[TagsmithServer, bytes]) -> None:
    """A client reading at 24-40 KiB/s (the minimum is 16) had its downloads cut: the answer's
    progress was judged by what left the server's own buffer, which the kernel's send buffer takes
    in jumps of a megabyte or more, so a steady reader seemed stalled for longer than the deadline.
    Here the deadline is 2 s and the reader keeps 600 KiB/s."""
    server, original = answering
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(b"GET /custom/images/unread/original HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    rate, got, started = 600 * 1024, bytearray(), time.monotonic()
    while True:
        wanted = int(rate * (time.monotonic() - started)) - len(got)
        if wanted > 0:
            try:
                chunk = sock.recv(min(wanted, 65536))
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
        time.sleep(0.02)
    sock.close()
    assert got.endswith(original), f"{len(got)} of {len(original)} bytes came"


def test_an_answer_nobody_reads_is_dropped_after_its_deadline(answering: tuple[TagsmithServer, bytes]) -> None:
    """uvicorn kept an unread answer for as long as the connection lasted: 100 connections asking for
    a 25 MB original and reading nothing held 2.4 GB. Unread past the 2 s setting, it is dropped."""
    server, original = answering
    sock = ask_without_reading(server, "/custom/images/unread/original")
    time.sleep(5)
    answer, closed = answer_of(sock)
    assert len(answer) < len(original) and closed
    whole = requests.get(server.base + "/custom/images/unread/original", timeout=30)  # a reader gets it all
    assert whole.status_code == 200 and whole.content == original


def test_answers_nobody_reads_stay_within_the_budget(answering: tuple[TagsmithServer, bytes]) -> None:
    """Six unread 6.3 MB answers (each over 2 MB unsent) against a budget of 3 MB: past it, a
    connection is dropped at once (unless it alone holds any: one large answer still goes out)."""
    server, original = answering
    socks = [ask_without_reading(server, "/custom/images/unread/original") for _ in range(6)]
    time.sleep(0.5)
    with ThreadPoolExecutor(len(socks)) as pool:  # all read at once, well within the 2 s deadline
        answers = [answer for answer, _ in pool.map(answer_of, socks)]
    assert sum(original in answer for answer in answers) <= 3
    whole = requests.get(server.base + "/custom/images/unread/original", timeout=30)  # room again
    assert whole.status_code == 200 and whole.content == original


def read_all(sock: socket.socket, pause_s: float = 0.0) -> bytes:
    """What the server sends until it closes or sends nothing for 3 s, read 64 KB at a time with
    ``pause_s`` between reads."""
    received = b""
    sock.settimeout(3)
    try:
        while data := sock.recv(65536):
            received += data
            time.sleep(pause_s)
    except (TimeoutError, ConnectionResetError):
        pass
    return received


def test_a_request_line_sent_behind_a_streamed_answer_is_bounded_too(answering: tuple[TagsmithServer, bytes]) -> None:
    """Bytes of a pipelined request that came while the one before was answered were not counted:
    a request line sent behind a streamed backup grew a server by 200 MB and stalled its loop."""
    server, _ = answering
    sock = connect(server)
    sock.sendall(b"GET /backup HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /")
    with ThreadPoolExecutor(1) as pool:
        reading = pool.submit(read_all, sock)
        took = send_until_cut(sock, b"a" * 65536)
        received = reading.result()
    assert took < 5  # cut off at the limit (then discarded for LINGER_S at most); it had read all 20 MB
    assert b"HTTP/1.1 200" not in received[1:]  # the endless request was never served


def test_headers_behind_a_streamed_answer_get_their_time_again_once_it_ends(answering: tuple[TagsmithServer, bytes]) -> None:
    """The header clock that ran out while the request before was answered was never started
    again: headers sent a byte every 3 s behind a streamed backup were served after 117 s."""
    server, original = answering
    sock = connect(server)
    sock.sendall(b"GET /backup HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /custom/tags HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    received = read_all(sock, pause_s=0.05)  # about 1 MB/s: the 6.3 MB backup outlasts the 0.5 s header setting
    backup, _, rest = received.partition(b"\r\n0\r\n\r\n")  # the end of a chunked answer
    assert backup.startswith(b"HTTP/1.1 200") and len(backup) > len(original)  # all of it came, then:
    assert status_and_code(rest) == (408, "header_timeout")


@pytest.fixture(scope="module")
def slow_app_port() -> Iterator[int]:
    """The bounded protocol (16 KiB of headers) in front of an app whose ``/slow`` answers after 1 s."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await asyncio.sleep(1.0 if scope["path"] == "/slow" else 0)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"slow ok"})

    port = free_port()
    server = uvicorn.Server(server_config(app, Settings(host="127.0.0.1", port=port)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(10)


def test_headers_that_begin_in_the_read_ending_the_request_before_are_counted(slow_app_port: int) -> None:
    """The request line and headers of a pipelined request that came in the same read as the end of
    the one before went uncounted: 15 KB of them, then 2 KB more, passed a 16 KiB limit."""
    sock = socket.create_connection(("127.0.0.1", slow_app_port), timeout=10)
    sock.sendall(b"GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /next HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 + b"X-Filler: " + b"a" * 15_000 + b"\r\n")  # one read, most likely
    time.sleep(0.2)
    sock.sendall(b"X-More: " + b"a" * 2000 + b"\r\n")
    answer, closed = answer_of(sock)
    assert b"slow ok" in answer and closed and b"\r\nconnection: close\r\n" in answer.lower()


def test_a_refusal_behind_a_request_still_running_never_goes_out_as_its_answer(slow_app_port: int) -> None:
    """Headers over the limit sent behind a request not yet answered got their 431 written as that
    request's answer (which ran on, and failed writing its own: "Cannot call write() after
    write_eof()"); cut at once instead, its writes failed with tracebacks. That answer now ends, then
    the connection closes: nothing goes out in the wrong place."""
    sock = socket.create_connection(("127.0.0.1", slow_app_port), timeout=10)
    sock.sendall(b"GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /next HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    for _ in range(30):  # discarded while the answer ends, and after it: no reset
        sock.sendall(b"X-Filler: " + b"a" * 1000 + b"\r\n")
    answer, closed = answer_of(sock)
    assert answer.startswith(b"HTTP/1.1 200") and b"slow ok" in answer and b"431" not in answer and closed
    assert b"\r\nconnection: close\r\n" in answer.lower()  # the answer says the connection ends with it


def test_a_request_for_another_hosts_url_is_refused(server: TagsmithServer) -> None:
    """``GET http://name/path`` is for ``name`` whatever the Host header says (RFC 9112 3.2.2); with
    only the header checked, a request for a rebound name's URL had passed as ``localhost``'s."""

    def ask(target: str, host: str) -> tuple[int, str]:
        with connect(server) as sock:
            sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            return status_and_code(answer_of(sock)[0])

    assert ask("http://rebound.evil.example:5000/custom/tags", "localhost") == (400, "host_not_allowed")
    assert ask("http://rebound.evil.example/custom/tags", "127.0.0.1")[1] == "host_not_allowed"
    assert ask(f"http://127.0.0.1:{server.port}/custom/tags", "rebound.evil.example")[0] == 200
    assert ask(f"http://[::1]:{server.port}/custom/tags", "rebound.evil.example")[0] == 200  # had lost its brackets
    assert ask("http://[::2]/custom/tags", "127.0.0.1")[1] == "host_not_allowed"
    assert ask("/custom/tags", "localhost")[0] == 200


def test_an_answer_sent_before_the_body_has_come_says_the_connection_closes(server: TagsmithServer) -> None:
    """Answered early (a form refused at its first part, a body too large by its length), the
    connection ends; without ``Connection: close`` a keep-alive client sent its next request on it
    and got "server disconnected" (4-7 of 40 requests failed)."""
    fields = b"".join(b'--B\r\nContent-Disposition: form-data; name="x%d"\r\n\r\nv\r\n' % i for i in range(5000))
    body = fields + b'--B\r\nContent-Disposition: form-data; name="data"; filename="a.jpg"\r\n\r\nxx\r\n--B--\r\n'
    for path, declared in (("/custom/add", len(body)), ("/custom/add", 10_000_000)):
        with connect(server) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {declared}\r\n"
                         "Content-Type: multipart/form-data; boundary=B\r\n\r\n".encode() + body[:4000])
            sock.settimeout(10)
            head = sock.recv(65536).partition(b"\r\n\r\n")[0].lower()
            assert head.split()[1] in (b"400", b"413", b"503") and b"\r\nconnection: close" in head, head
    with requests.Session() as session:  # a keep-alive client: every request is answered
        answers = [session.post(f"{server.base}/custom/add", data=body,
                                headers={"Content-Type": "multipart/form-data; boundary=B"}, timeout=30)
                   for _ in range(20)]
    assert {a.status_code for a in answers} == {400}
    assert session.get(f"{server.base}/health", timeout=10).status_code == 200


def test_concurrent_restores_past_the_budget_refuse_the_later_one_at_once(server: TagsmithServer) -> None:
    """Two restores of 1.6 MB against a budget of 3 MB: taken a piece at a time, the first had been
    refused halfway once the second had come whole, and four together had all been refused. A
    declared length is now taken whole: the later one gets 503 before it sends, the first ends."""
    body = b'--b\r\nContent-Disposition: form-data; name="data"; filename="s"\r\n\r\n' + b"x" * 1_600_000 + b"\r\n--b--\r\n"
    head = (f"POST /restore HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: multipart/form-data; "
            f"boundary=b\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    first, second = connect(server), connect(server)
    first.sendall(head + body[:1_000_000])
    time.sleep(0.5)
    second.sendall(head)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        second.sendall(body)
    assert status_and_code(answer_of(second)[0]) == (503, "busy")
    first.sendall(body[1_000_000:])
    assert status_and_code(answer_of(first)[0])[0] == 400  # all of it came and was judged (not a backup), not busy


@pytest.mark.parametrize("coding", ["gzip", "xchunked", "gzip, chunked", "identity"])
def test_a_body_in_another_transfer_coding_is_refused(server: TagsmithServer, coding: str) -> None:
    """Taken as a body read until the connection closed (and answered 200): a proxy in front that
    reads the coding otherwise could hide a second request in it."""
    with connect(server) as sock:
        sock.sendall(f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: {coding}\r\n\r\n5\r\nhello\r\n0\r\n\r\n".encode())
        answer, closed = answer_of(sock)
    assert status_and_code(answer) == (501, "not_implemented") and closed
