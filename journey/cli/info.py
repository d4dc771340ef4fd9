"""`journey version`."""

import typer

from journey import __version__
from journey.cli import app


@app.command()
def version() -> None:
    """Print the engine's version."""
    typer.echo(__version__)

