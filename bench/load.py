"""A lean HTTP/1.1 load client for the benchmarks: prebuilt requests on keep-alive sockets.

The benchmark's clients share the machine's cores with the server they measure. A full client
library spends a millisecond or more of CPU per upload (multipart encoding, header objects,
response models); this one sends bytes built once and reads the reply by its Content-Length, so
nearly all of the CPU goes to the server, as it would with clients on other machines.
"""

from __future__ import annotations

import socket
import uuid
from urllib.parse import urlsplit


def upload_request(url: str, data: bytes, field: str = "data", filename: str = "photo.jpg") -> bytes:
    """The bytes of a POST of ``data`` as the multipart form field ``field``, keep-alive."""
    parts = urlsplit(url)
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    head = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Connection:
    """One keep-alive connection to the server of ``url`` (http only)."""

    def __init__(self, url: str, timeout: float = 120) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def send(self, request: bytes) -> tuple[int, bytes]:
        """Send one prebuilt request; (status, body) of the reply."""
        self.sock.sendall(request)
        while b"\r\n\r\n" not in self.buffer:
            self._read()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = next(
            (int(line.split(b":", 1)[1]) for line in lines[1:] if line.lower().startswith(b"content-length:")), None
        )
        if length is None:
            raise RuntimeError("the reply has no Content-Length")
        while len(self.buffer) < length:
            self._read()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, body

    def _read(self) -> None:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
