"""The `journey` command: one Typer app assembled from the command modules."""

from __future__ import annotations

import sys

import typer

try:  # typer >= 0.25 carries its own copy of click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer on plain click
    from click import exceptions as click_exceptions  # type: ignore[no-redef]

from journey.errors import JourneyError

app = typer.Typer(
    name="journey",
    help="Event-sourced customer-journey engine.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def fail(message: str) -> None:
    """Print one error line and exit 1; for command bodies."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _register() -> None:
    # Command modules attach themselves to `app` on import.
    from journey.cli import commands  # noqa: F401


def _help_hint(exc: click_exceptions.UsageError) -> str:
    path = exc.ctx.command_path if exc.ctx is not None else "journey"
    return f" (see '{path} --help')"


def main(argv: list[str] | None = None) -> None:
    """Entry point: one-line errors for usage mistakes and known failures."""
    _register()
    try:
        # Without standalone mode click returns a command's exit code instead of exiting.
        code = app(args=argv, prog_name="journey", standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except click_exceptions.NoArgsIsHelpError:
        sys.exit(0)
    except click_exceptions.UsageError as exc:
        typer.echo(f"error: {exc.format_message()}{_help_hint(exc)}", err=True)
        sys.exit(2)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except click_exceptions.ClickException as exc:
        typer.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except JourneyError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
