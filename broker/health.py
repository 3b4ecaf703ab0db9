"""What a supervisor needs of the services that have no web app of their own (the router and the
tracker): ``/healthz`` and ``/readyz``, so it can tell alive from ready, and a clean stop on
SIGTERM.

``/healthz`` answers 200 while the service's event loop runs. ``/readyz`` answers 200 only once
the service can do its work (the router: every assigned partition has its producer; the tracker:
its views caught up and its producer started), else 503. Both answer JSON. A few lines of asyncio
rather than a web framework: two fixed paths, GET only, nothing read from the request but its
first line.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable

from broker.logging import get_logger

log = get_logger("health")

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


def _answer(status: int, body: dict[str, object]) -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + data


async def serve_health(
    host: str, port: int, service: str, ready: Callable[[], bool]
) -> asyncio.Server:
    """Listen on ``host:port``; returns the server (close it to stop)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            parts = line.decode("latin-1").split()
            method, path = (parts[0], parts[1]) if len(parts) >= 2 else ("", "")
            if method != "GET":
                out = _answer(405, {"error": "GET only"})
            elif path == "/healthz":
                out = _answer(200, {"service": service, "alive": True})
            elif path == "/readyz":
                ok = ready()
                out = _answer(200 if ok else 503, {"service": service, "ready": ok})
            else:
                out = _answer(404, {"error": "try /healthz or /readyz"})
            writer.write(out)
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port, limit=8192)
    log.info("health_listening", service=service, host=host, port=port)
    return server


def stop_on_signals(stop_event: asyncio.Event, service: str) -> None:
    """First SIGTERM or SIGINT: set ``stop_event`` (the service finishes the work in hand and
    returns, so the process exits 0). Second: exit at once."""
    loop = asyncio.get_running_loop()

    def handle(sig: signal.Signals) -> None:
        if stop_event.is_set():
            os._exit(128 + sig.value)
        log.info(f"{service}_stopping", component=service, signal=sig.name)
        stop_event.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, handle, sig)
