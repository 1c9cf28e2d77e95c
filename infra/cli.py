"""The ``tagsmith`` command: ``serve`` (the embedded default), ``worker``, and the client commands
(``add``, ``train``, ``predict``, ...) that talk to a server over HTTP."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from pathlib import Path
from typing import Any

from infra.commands import add_commands
from shared.core.logs import configure_logging
from shared.core.process import tune_process
from shared.core.settings import Settings, SettingsError, read_settings


def say(line: str) -> None:
    """A line for the person at the console, on stdout; the JSON logs go to stderr."""
    print(f"tagsmith: {line}", flush=True)


STALE_TEMPORARY_S = 600  # a temp file of the store older than this at start-up is a crashed write's


def serve(args: argparse.Namespace, settings: Settings) -> None:
    from infra.embedded import WorkerSupervisor, data_folder_lock, port_taken, private_folder, start_redis
    from infra.gateway import create_gateway
    from shared.data.store import LocalStore
    from shared.domain.services import build_services

    if port_taken(settings.host, settings.port):
        raise SystemExit(f"tagsmith: port {settings.port} on {settings.host} is taken by another program; serve on "
                         "another with --port, and give the command line and the Python client its address in TAGSMITH_URL "
                         "(or set TAGSMITH_PORT for all of them).")
    with data_folder_lock(settings.data_dir) as lock_fd:
        redis_process = None
        if not settings.redis_url:
            redis_process, url = start_redis(settings.redis_dir, lock_fd)
            settings = settings.model_copy(update={"redis_url": url})
        if not settings.s3_endpoint:  # the local store: made the owner's alone before the store makes it
            private_folder(settings.store_dir)
        services = build_services(settings)
        if isinstance(services.store, LocalStore):  # writes a crash cut short left their temp files
            removed = services.store.remove_stale_temporaries(STALE_TEMPORARY_S)
            if removed:
                logging.getLogger("tagsmith").info("removed %d temp files of interrupted writes", removed)
        if redis_process is not None:
            # Our own Redis: no worker but ours can hold a training, and ours are all gone.
            # (With a shared Redis, workers elsewhere may be mid-training: their leases decide.)
            requeued = services.queue.recover_abandoned(every_started=True)
            if requeued:
                logging.getLogger("tagsmith").info("requeued %d interrupted trainings", len(requeued))
        prepare_backbone(settings)
        supervisor = WorkerSupervisor({**os.environ, **settings.as_env()}, lock_fd, settings.worker_nice)
        supervisor.start()
        try:
            run_server(create_gateway(services=services), settings, f"data in {settings.data_dir}", whole=True)
        finally:
            supervisor.stop()
            if redis_process is not None:
                redis_process.terminate()
                redis_process.wait(30)


def prepare_backbone(settings: Settings) -> None:
    """Build the CPU runtimes' export of the backbone now, saying so, if this is its first start."""
    from shared.models.backbone import choose_runtime
    from shared.models.backbone.exported import export_onnx, export_path

    if choose_runtime(settings.runtime, settings.device) == "torch":
        return
    if not export_path(settings.model_cache_dir).exists():
        say(f"first start: building the backbone's ONNX export once, into {settings.model_cache_dir} (up to a minute)")
        export_onnx(settings.model_cache_dir)


def run_server(app: Any, settings: Settings, what: str, whole: bool = False) -> None:
    """The HTTP server (``shared.web.server``: uvicorn, bounded) on the settings' address, saying
    where it listens once it does; ``whole``: the whole service (``serve``), not one container's
    function service behind the gateway."""
    import uvicorn

    from shared.web.server import server_config

    class AnnouncingServer(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started:
                for line in serving_lines(settings, what, whole):
                    say(line)

    AnnouncingServer(server_config(app, settings)).run()


def serving_lines(settings: Settings, what: str, whole: bool = False) -> list[str]:
    """What ``run_server`` says once it listens: an address to open (the loopback one where it
    listens on every address, which no browser opens), which host names it answers for, and, for
    the whole service (``whole``) reachable beyond this machine with no API keys, a warning."""
    everywhere = settings.host in ("0.0.0.0", "::")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(settings.host, settings.host)
    host = f"[{host}]" if ":" in host else host
    where = " (listening on every address)" if everywhere else ""
    lines = [f"serving http://{host}:{settings.port}/{where} ({what}); Ctrl+C stops it"]
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        named = "" if everywhere else f" (or {settings.host})"
        lines.append(f"requests must name one of the hosts {settings.allowed_hosts}{named}; "
                     "add the names clients use to TAGSMITH_ALLOWED_HOSTS")
        if whole and not settings.api_key_list and not loopback(settings.host):
            lines.append("WARNING: no API keys (TAGSMITH_API_KEYS): anyone who can reach this address can read and "
                         "change everything here; the host check stops web pages that rebind a name to this "
                         "machine, not other machines, which may send any Host")
    return lines


def loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def service(args: argparse.Namespace, settings: Settings) -> None:
    """One service of the container topology (or the whole gateway) alone, as its container runs it."""
    from infra.gateway import app as gateway
    from infra.services import APPS

    app = gateway if args.name == "gateway" else APPS[args.name]
    run_server(app, settings, f"the {args.name} service")


def worker(args: argparse.Namespace, settings: Settings) -> None:
    from worker.main import run_worker

    tune_process()
    run_worker(settings, burst=args.burst, name=args.name)


def check(args: argparse.Namespace, settings: Settings) -> None:
    """Exit 0 when Redis and the object store answer, else 1 with the reason (for health checks)."""
    from shared.domain.services import build_services

    try:
        services = build_services(settings)
        services.redis.ping()
        services.store.ping()
    except Exception as exc:
        raise SystemExit(f"not ready: {exc}") from None
    print("ok")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tagsmith", description="Image tagging with custom keywords and styles.")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("serve", help="serve the HTTP API with its own Redis and worker (embedded default)")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 5000)")
    p.add_argument("--data-dir", help="folder for all data (default ./tagsmith-data)")
    p.set_defaults(run=serve)
    s = commands.add_parser("service", help="run one service of the container topology (see infra/services.py)")
    s.add_argument("name", choices=["images", "training", "predict", "state", "gateway"])
    s.add_argument("--host", help="address to bind (default $TAGSMITH_HOST, else 127.0.0.1)")
    s.add_argument("--port", type=int, help="port (default $TAGSMITH_PORT, else 5000)")
    s.set_defaults(run=service)
    w = commands.add_parser("worker", help="run a training worker against TAGSMITH_REDIS_URL")
    w.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    w.add_argument("--name", help="worker name shown in RQ (default: a random id)")
    w.set_defaults(run=worker)
    add_commands(commands)
    c = commands.add_parser("check", help="exit 0 when Redis and the object store answer (health checks)")
    c.set_defaults(run=check)
    args = parser.parse_args(argv)
    if hasattr(args, "client_command"):
        return run_client_command(args)
    try:
        settings = read_settings().model_copy(update=_overrides(args))  # the environment, read once, and the options given
    except SettingsError as exc:
        print(f"tagsmith: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    args.run(args, settings)
    return 0


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    """``serve``'s --host, --port and --data-dir, where given."""
    given = {name: getattr(args, name, None) for name in ("host", "port", "data_dir")}
    if given["data_dir"]:
        given["data_dir"] = Path(given["data_dir"]).resolve()
    return {name: value for name, value in given.items() if value is not None}


def run_client_command(args: argparse.Namespace) -> int:
    from infra.commands import refusal, shown
    from tagsmith_client import Client, TagsmithError

    try:
        client = Client(args.url, api_key=args.api_key)
    except ValueError as exc:  # --url or $TAGSMITH_URL names no http(s) address
        print(f"tagsmith: {shown(exc)}", file=sys.stderr)
        return 2
    try:
        with client:
            return int(args.client_command(client, args))
    except TagsmithError as exc:
        print(f"tagsmith: {refusal(exc)}", file=sys.stderr)
        return 1
    except TimeoutError as exc:
        print(f"tagsmith: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a local file to read or write: missing, a folder, not permitted
        print(f"tagsmith: {exc.strerror or exc}: {shown(exc.filename)}" if exc.filename else f"tagsmith: {shown(exc)}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
