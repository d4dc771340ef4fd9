"""`journey version`."""

import typer

from journey import __version__
from journey.cli import app


@app.command()
def version() -> None:
    """Print the engine's version."""
    typer.echo(__version__)


@app.command(hidden=True)
def placeholder() -> None:
    """Keeps the app a group while it has a single command."""
