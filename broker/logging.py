"""structlog set-up, done once per process.

Services log JSON lines (one event per line, machine-readable, ready for a log store); a person at
a terminal gets the readable console renderer. ``CBX_LOG_FORMAT=json|console`` overrides the guess.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from broker import env

_configured = False


def configure_logging(*, json: bool | None = None, level: str | None = None) -> None:
    """Configure structlog and the standard library root logger; later calls are no-ops."""
    global _configured
    if _configured:
        return
    fmt = (env.get("CBX_LOG_FORMAT") or "").lower()
    if json is None:
        json = fmt == "json" if fmt in ("json", "console") else not sys.stderr.isatty()
    level_name = (level or env.get("CBX_LOG_LEVEL", "INFO") or "INFO").upper()
    numeric = logging.getLevelNamesMapping().get(level_name, logging.INFO)

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if json:
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Library loggers (aiokafka, uvicorn) go to stderr at WARNING so they do not drown ours.
    logging.basicConfig(stream=sys.stderr, level=max(numeric, logging.WARNING))
    _configured = True


def get_logger(name: str, **context: Any) -> Any:
    """A structlog logger with ``component`` and any extra context bound.

    The logger stays lazy (configuration is read at first use, not at import), so modules can
    create their loggers at import time and still follow :func:`configure_logging`.
    """
    return structlog.get_logger(name, component=name, **context)
