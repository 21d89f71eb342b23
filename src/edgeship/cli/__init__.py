"""The ``edgeship`` command line: thin commands that parse, call the Python API and render with rich.

One module per command group: ``build`` (optimize, inspect, recipes, targets, demo, pack),
``hybrid`` (split), ``bundle`` (keygen, verify, run), ``serve``, ``ota`` (repo, publish, agent, fleet). On a device-only
install (``pip install edgeship[runtime]``, no onnx) the build commands are not offered.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Annotated, Optional

import typer

from edgeship.cli import build, bundle, hybrid, ota, serve
from rich.markup import escape

from edgeship.cli._common import console, err_console, setup_logging

__all__ = ["app", "main"]

app = typer.Typer(
    no_args_is_help=True,
    help="edgeship: import, compress, measure and choose models for edge devices; sign, serve and update them.",
)


def _version(value: bool) -> None:
    if value:
        from edgeship import __version__

        console.print(f"edgeship {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = None,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More messages on stderr (-vv: debug).")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Errors only on stderr.")] = False,
) -> None:
    """edgeship: import, compress, measure and choose models for edge devices; sign, serve and update them."""
    setup_logging(verbose, quiet)


def build_side_installed() -> bool:
    """Whether the build side's frameworks are installed (edgeship[all]); a device has only the runtime."""
    try:
        return importlib.util.find_spec("onnx") is not None
    except (ImportError, ValueError):
        return False


_build = build_side_installed()
if _build:
    build.register(app)
    hybrid.register(app)
bundle.register(app, build=_build)
serve.register(app)
ota.register(app)


def main() -> None:
    """Run the CLI. A bad argument is one line on stderr and exit status 2, like every other bad input."""
    from typer.exceptions import TyperException

    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        err_console.print("interrupted")
        sys.exit(130)
    except TyperException as exc:  # click's usage and parameter errors, as typer ships them
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `edgeship` or `edgeship repo`: the help
            exc.show()  # type: ignore[attr-defined]
            sys.exit(0)
        ctx = getattr(exc, "ctx", None)
        hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        err_console.print(f"[bold red]error:[/] {escape(message)}{hint}", highlight=False, soft_wrap=True)
        sys.exit(getattr(exc, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
