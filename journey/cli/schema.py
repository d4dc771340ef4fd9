"""`journey schema export|list`: the event contract as JSON Schema files and as a table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from journey.cli import app
from journey.errors import ConfigurationError
from journey.output import DataTable, make_console
from schemas.catalogue import CATALOGUE, TouchpointKind
from schemas.export import export_json_schemas

schema_app = typer.Typer(
    name="schema",
    help="The event contract: export it as JSON Schema, or list the touchpoint catalogue.",
    no_args_is_help=True,
)
app.add_typer(schema_app, name="schema")


def required_properties(kind: TouchpointKind) -> list[str]:
    """The properties a touchpoint of this kind must carry, as spelled on the wire."""
    return [
        field.alias or name
        for name, field in kind.properties.model_fields.items()
        if field.is_required()
    ]


def envelope_requirements(kind: TouchpointKind) -> list[str]:
    """Envelope fields this kind needs beyond the ones every touchpoint has."""
    if kind.requires_both_ids:
        return ["customer_id", "anonymous_id"]
    if kind.requires_case_id:
        return ["case_id"]
    return []


@schema_app.command("export")
def export(
    directory: Annotated[
        Path,
        typer.Argument(
            metavar="DIR", help="folder to write the *.schema.json files into (created)"
        ),
    ],
) -> None:
    """Write the JSON Schema of every touchpoint type, the friction event and the dead letter."""
    # Checked here so the message names the argument: mkdir would say only "File exists".
    if directory.exists() and not directory.is_dir():
        raise ConfigurationError(
            f"{directory} is a file, not a folder: give a folder to write into"
        )
    try:
        written = export_json_schemas(directory)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot write the schemas to {directory}: {exc.strerror or exc}"
        ) from exc
    for path in written:
        typer.echo(str(path))
    # The summary goes to stderr so stdout stays a plain list of files for scripts.
    typer.echo(f"{len(written)} schema files written to {directory}", err=True)


@schema_app.command("list")
def list_types() -> None:
    """Print the touchpoint catalogue: type, business area and required properties."""
    table = DataTable(title="touchpoint catalogue (wire format v1)")
    table.add_column("type")
    table.add_column("business area")
    table.add_column("required properties")
    table.add_column("also needs")
    for kind in CATALOGUE.values():
        table.add_row(
            kind.name,
            kind.area.value,
            ", ".join(required_properties(kind)) or "-",
            ", ".join(envelope_requirements(kind)),
        )
    console = make_console()
    console.print(table)
    console.print(f"[dim]{len(CATALOGUE)} touchpoint types[/dim]")
