"""What the bounded HTTP server costs (``python -m bench.server``).

The same tagsmith app (every middleware; ``GET /health`` with a browser's eight headers, so the
server's own work dominates) under uvicorn's own httptools protocol and under
``shared.web.server.BoundedHttpProtocol``, each in its own process, measured in alternating rounds
by one keep-alive client; prints requests per second and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from bench.load import Connection
from infra.embedded import free_port
from tests.support.servers import ROOT, clean_env

SERVE = """
import sys, uvicorn
from shared.core.settings import Settings
from shared.web.app import create_app
from shared.web.server import server_config
settings = Settings(redis_url="redis://127.0.0.1:1/0", port=int(sys.argv[1]))  # /health touches no backend
config = server_config(create_app([], settings=settings), settings)
if sys.argv[2] == "plain":
    config.http = "httptools"
uvicorn.Server(config).run()
"""
HEADERS = ("Accept: application/json", "Accept-Language: en-GB,en;q=0.9", "Accept-Encoding: gzip, deflate",
           "User-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/130.0", "Sec-Fetch-Site: same-origin",
           "Sec-Fetch-Mode: cors", "Referer: http://127.0.0.1/", "Connection: keep-alive")


def start(kind: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", SERVE, str(port), kind], cwd=ROOT, env=clean_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with Connection(url, timeout=2) as probe:
                probe.send(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            return process, url
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the {kind} server did not start")


def rate(url: str, seconds: float) -> float:
    port = url.rsplit(":", 1)[1]
    request = ("GET /health HTTP/1.1\r\nHost: 127.0.0.1:" + port + "\r\n" + "\r\n".join(HEADERS) + "\r\n\r\n").encode()
    done, started = 0, time.perf_counter()
    with Connection(url) as connection:
        while time.perf_counter() - started < seconds:
            status, _ = connection.send(request)
            assert status == 200, status
            done += 1
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    servers = {kind: start(kind) for kind in ("plain", "bounded")}
    try:
        rates: dict[str, list[float]] = {kind: [] for kind in servers}
        for _ in range(args.rounds):
            for kind, (_, url) in servers.items():
                rates[kind].append(rate(url, args.seconds))
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(10)
    plain, bounded = (statistics.median(rates[k]) for k in ("plain", "bounded"))
    print(f"GET /health, one keep-alive client, median of {args.rounds} alternating rounds of {args.seconds:g} s:")
    print(f"  uvicorn's httptools protocol: {plain:7.0f} requests/s")
    print(f"  BoundedHttpProtocol:          {bounded:7.0f} requests/s   ratio {bounded / plain:.3f}")


if __name__ == "__main__":
    main()
