"""structlog set-up, done once per process.

Services log JSON lines (one event per line, machine-readable, ready for a log store); a person at
a terminal gets the readable console renderer. ``CBX_LOG_FORMAT=json|console`` overrides the guess.

Commands that tell a person a story (``cbx demo``, ``cbx scenario run``) send every line to a file
as JSON and show only warnings and errors on the terminal (:func:`configure_logging` with
``file``), so the story is not drowned by the services it runs.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import IO, Any

import structlog

from broker import env

_configured = False


class _Tee:
    """The last processor for a command that narrates: every event to ``file`` as a JSON line,
    and those at ``shown`` or above to the terminal, readable."""

    def __init__(self, file: IO[str], shown: int) -> None:
        self.file = file
        self.shown = shown
        self.json = structlog.processors.JSONRenderer()
        self.console = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())

    def __call__(self, logger: Any, name: str, event: MutableMapping[str, Any]) -> Any:
        self.file.write(str(self.json(logger, name, dict(event))) + "\n")
        self.file.flush()
        level = logging.getLevelNamesMapping().get(str(event.get("level", "info")).upper(), 0)
        if level >= self.shown:
            print(self.console(logger, name, event), file=sys.stderr)
        raise structlog.DropEvent


def configure_logging(
    *,
    json: bool | None = None,
    level: str | None = None,
    file: Path | None = None,
    shown: int = logging.WARNING,
) -> None:
    """Configure structlog and the standard library root logger; later calls are no-ops.

    With ``file``, every event goes there as JSON and only those at ``shown`` or above reach the
    terminal (library loggers too).
    """
    global _configured
    if _configured:
        return
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        out = file.open("a", encoding="utf-8")
        level_name = (level or env.get("CBX_LOG_LEVEL", "INFO") or "INFO").upper()
        structlog.configure(
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.format_exc_info,
                _Tee(out, shown),
            ],
            wrapper_class=structlog.make_filtering_bound_logger(
                logging.getLevelNamesMapping().get(level_name, logging.INFO)
            ),
            cache_logger_on_first_use=True,
        )
        handler = logging.StreamHandler(out)
        handler.setLevel(logging.WARNING)
        terminal = logging.StreamHandler(sys.stderr)
        terminal.setLevel(max(shown, logging.WARNING))
        logging.basicConfig(level=logging.WARNING, handlers=[handler, terminal])
        _configured = True
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
