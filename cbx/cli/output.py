"""Shared output helpers: rich for people, JSON for programs, one-line errors on stderr."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def print_json(data: Any) -> None:
    """Write ``data`` as JSON to stdout (no colour, no wrapping)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def fail(reason: str, detail: str = "", code: int = 1) -> NoReturn:
    """Print a one-line reason (and an optional detail block) to stderr and exit non-zero."""
    err_console.print(f"[bold red]error:[/] {reason}", highlight=False, soft_wrap=True)
    if detail:
        err_console.print(detail, highlight=False, markup=False)
    raise typer.Exit(code)


def log_file(command: str) -> Path:
    """Where a narrated command's service log lines go: ``$CBX_HOME/logs/cbx-COMMAND.log``."""
    from broker.paths import cbx_home

    return cbx_home() / "logs" / f"cbx-{command}.log"
