"""`serve`: bind listen sockets once, then run the app in N pre-forked workers.

With several workers, each one listens on its own SO_REUSEPORT socket, so the
kernel spreads connections evenly over them (one shared socket lets whichever
worker wakes first take a whole burst). The parent holds a bound, not
listening, socket per address: it reserves the port and reports a clash at
start. Workers write metrics into PROMETHEUS_MULTIPROC_DIR so /metrics
aggregates them, and drain in-flight requests on SIGTERM. The parent only
supervises.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

from .config import ConfigError, Settings

log = logging.getLogger("paycore.server")


def prepare_metrics_dir(workers: int) -> str | None:
    """Settle multiprocess metrics before prometheus_client is imported.

    Returns a directory this process created (to delete at exit), if any.
    """
    created = None
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip()
    if not path:
        if workers == 1:
            return None
        path = created = tempfile.mkdtemp(prefix="paycore-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    directory = Path(path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # Files of a previous run would be summed into ours.
        for stale in directory.glob("*.db"):
            stale.unlink()
    except OSError as exc:
        raise ConfigError(f"PROMETHEUS_MULTIPROC_DIR={path}: {exc.strerror}") from None
    return created


def bind(host: str, port: int, *, listen: bool = True, reuse_port: bool = False) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve listen host {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        if listen:
            sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def worker_sockets(reserved: list[socket.socket]) -> list[socket.socket]:
    """A worker's own listening sockets, on the addresses the parent reserved."""
    return [bind(*sock.getsockname()[:2], listen=True, reuse_port=True) for sock in reserved]


async def _run(settings: Settings, sockets: list[socket.socket]) -> None:
    from aiohttp import web

    from .app import create_app

    runner = web.AppRunner(
        create_app(settings),
        handle_signals=False,
        access_log=None,
        shutdown_timeout=settings.shutdown_timeout_s,
    )
    await runner.setup()
    for sock in sockets:
        await web.SockSite(runner, sock).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info(
        "worker serving",
        extra={"pid": os.getpid(), "listen": [_name(s) for s in sockets]},
    )
    await stop.wait()
    log.info("worker draining", extra={"pid": os.getpid()})
    # Stops accepting, waits for in-flight requests (up to the timeout), then
    # closes the database pool.
    await runner.cleanup()
    log.info("worker stopped", extra={"pid": os.getpid()})


def _name(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def run_worker(settings: Settings, sockets: list[socket.socket]) -> int:
    import uvloop

    # libuv's event loop: the same asyncio API, about 15% less CPU per
    # request than the default loop (service/README.md, benchmark).
    uvloop.run(_run(settings, sockets))
    return 0


def serve(settings: Settings) -> int:
    own_metrics_dir = prepare_metrics_dir(settings.workers)
    try:
        several = settings.workers > 1
        sockets = [
            bind(host, settings.port, listen=not several, reuse_port=several)
            for host in settings.hosts
        ]
        log.info(
            "listening",
            extra={"listen": [_name(s) for s in sockets], "workers": settings.workers},
        )
        if not several:
            return run_worker(settings, sockets)
        return _supervise(settings, sockets)
    finally:
        if own_metrics_dir:
            shutil.rmtree(own_metrics_dir, ignore_errors=True)


def _spawn(settings: Settings, sockets: list[socket.socket]) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = run_worker(settings, worker_sockets(sockets))
        except Exception:
            log.exception("worker crashed")
        finally:
            sys.stdout.flush()
            os._exit(code)
    return pid


def _supervise(settings: Settings, sockets: list[socket.socket]) -> int:
    from prometheus_client import multiprocess

    stopping = False
    children: set[int] = set()

    def on_signal(signum: int, _frame) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for _ in range(settings.workers):
        children.add(_spawn(settings, sockets))
    failures = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        children.discard(pid)
        multiprocess.mark_process_dead(pid)
        if stopping:
            continue
        code = os.waitstatus_to_exitcode(status)
        log.error("worker exited unexpectedly; restarting", extra={"pid": pid, "code": code})
        failures += 1
        time.sleep(min(5.0, 0.1 * failures))
        if not stopping:
            children.add(_spawn(settings, sockets))
    for sock in sockets:
        sock.close()
    log.info("stopped")
    return 0
