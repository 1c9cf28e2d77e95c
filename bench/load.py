"""A lean HTTP/1.1 load client for the benchmarks: prebuilt requests on keep-alive sockets.

The benchmark's clients share the machine's cores with the server they measure. A full client
library spends a millisecond or more of CPU per upload (multipart encoding, header objects,
response models); this one sends bytes built once and reads the reply by its Content-Length, so
nearly all of the CPU goes to the server, as it would with clients on other machines.
"""

from __future__ import annotations

import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit


def upload_request(url: str, data: bytes, field: str = "data", filename: str = "photo.jpg") -> bytes:
    """The bytes of a POST of ``data`` as the multipart form field ``field``, keep-alive."""
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    head = (
        f"POST {target} HTTP/1.1\r\nHost: {parts.hostname}:{parts.port or 80}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Connection:
    """One keep-alive connection to the server of ``url`` (plain http), reopened when the server
    has closed it (idle timeout, ``Connection: close``)."""

    def __init__(self, url: str, timeout: float = 120) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise ValueError(f"only http URLs, not {url!r}")
        self.address = (parts.hostname or "localhost", parts.port or 80)
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.buffer = b""

    def send(self, request: bytes) -> tuple[int, bytes]:
        """Send one prebuilt request; (status, body) of the reply. A connection the server closed
        while idle is reopened and the request sent once more."""
        fresh = self.sock is None
        try:
            return self._exchange(request)
        except (ConnectionError, _Closed):
            if fresh:
                raise
            self.close()
            return self._exchange(request)

    def _exchange(self, request: bytes) -> tuple[int, bytes]:
        if self.sock is None:
            self.sock = socket.create_connection(self.address, timeout=self.timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.buffer = b""
        self.sock.sendall(request)
        while b"\r\n\r\n" not in self.buffer:
            self._read(self.sock)
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(b":") for line in lines[1:])}
        if status in (204, 304):
            length = 0
        elif b"content-length" in headers:
            length = int(headers[b"content-length"])
        else:
            raise RuntimeError(f"HTTP {status} reply without Content-Length")
        while len(self.buffer) < length:
            self._read(self.sock)
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        if headers.get(b"connection", b"").lower() == b"close":
            self.close()
        return status, body

    def _read(self, sock: socket.socket) -> None:
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise _Closed("the server closed the connection")
        self.buffer += chunk

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock, self.buffer = None, b""

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class _Closed(Exception):
    """The server closed the connection before the whole reply arrived."""


def keep_alive_clients(url: str, requests: list[bytes], clients: int, seconds: float) -> tuple[int, int, float]:
    """``clients`` keep-alive connections sending the raw ``requests`` in turn for ``seconds``:
    (answers, error answers, seconds it took)."""
    deadline = time.perf_counter() + seconds
    counts, errors = [0] * clients, [0] * clients

    def client(i: int) -> None:
        with Connection(url) as connection:
            k = i
            while time.perf_counter() < deadline:
                status, _ = connection.send(requests[k % len(requests)])
                counts[i] += 1
                errors[i] += status >= 400
                k += 1

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return sum(counts), sum(errors), time.perf_counter() - started
