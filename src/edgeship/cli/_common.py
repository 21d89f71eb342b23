"""What every command shares: consoles, logging, the one-line error guard, progress, JSON output."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, Callable

import typer
from rich.console import Console

from edgeship.core.errors import EdgeshipError

__all__ = ["console", "err_console", "guard", "shown", "progress_runner", "print_json", "setup_logging", "log"]

# Piped output (logs, CI) has no terminal width; give tables room instead of folding them.
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)
log = logging.getLogger("edgeship")


def setup_logging(verbose: int, quiet: bool) -> None:
    """-v: edgeship's info messages, -vv: debug; -q: errors only. Messages go to stderr."""
    level = logging.ERROR if quiet else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("edgeship")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def shown(value: object) -> str:
    """``value`` as text safe to print with rich markup on: markup escaped, and control characters
    (a terminal escape sequence sent by a device, say) written as \\xNN instead of obeyed."""
    from rich.markup import escape

    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in str(value))
    return escape(text)


def guard(fn: Callable[[], Any]) -> Any:
    """Run ``fn``; turn a user-facing error into one line on stderr and exit status 2."""
    try:
        return fn()
    except EdgeshipError as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        err_console.print(f"[bold red]error:[/] {shown(first)}", highlight=False, soft_wrap=True, markup=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(130) from None
    except Exception as exc:  # a bug in edgeship or a dependency: still one line, unless debugging
        if os.environ.get("EDGESHIP_DEBUG"):
            raise
        log.debug("internal error", exc_info=True)
        first = (str(exc).strip().splitlines() or [""])[0]
        err_console.print(
            f"[bold red]internal error:[/] {type(exc).__name__}: {shown(first)} (set EDGESHIP_DEBUG=1 or -vv for a traceback)",
            highlight=False, soft_wrap=True,
        )
        raise typer.Exit(1) from None


class _PlainProgress:
    """Progress as plain lines, for logs, CI and nohup (a rich bar needs a terminal)."""

    def __init__(self, label: str) -> None:
        self.label, self.last = label, ""

    def __enter__(self) -> "_PlainProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, done: int, total: int, name: str) -> None:
        line = f"{self.label}: [{done}/{total}] {name}"
        if line != self.last:
            self.last = line
            print(line, file=sys.stderr, flush=True)


def progress_runner(label: str) -> tuple[Any, Callable[[int, int, str], None]]:
    """(context manager, update(done, total, text)): a rich bar on a terminal, plain lines otherwise,
    nothing with -q."""
    if log.getEffectiveLevel() >= logging.ERROR:
        return _PlainProgress(label), lambda done, total, name: None
    if not err_console.is_terminal:
        plain = _PlainProgress(label)
        return plain, plain.update
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    progress = Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err_console, transient=True,
    )
    task = progress.add_task(label, total=None)

    def update(done: int, total: int, name: str) -> None:
        progress.update(task, completed=done, total=total, description=f"{label}: {name}")

    return progress, update


def print_json(value: Any) -> None:
    """Machine-readable output on stdout."""
    print(json.dumps(value, indent=2, default=str))
