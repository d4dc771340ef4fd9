"""JSON Schema export of the contract, for producers that do not use Python."""

from pathlib import Path
from typing import Any, Final

import orjson
from pydantic import BaseModel

from schemas.catalogue import CATALOGUE
from schemas.dead_letter import DeadLetter
from schemas.friction import FrictionEvent
from schemas.touchpoint import ANY_TOUCHPOINT, TOUCHPOINT_MODELS

DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
ID_PREFIX: Final = "urn:journey-engine:schema:v1:"

_ENVELOPE_NOTE: Final = (
    " Wire format v1 (EVENTS.md): a JSON object of at most 64 KiB; occurred_at may be"
    " at most 24 hours after the time it is validated (not expressible here)."
)


def _documented(schema: dict[str, Any], name: str, title: str, description: str) -> dict[str, Any]:
    return {
        "$schema": DIALECT,
        "$id": f"{ID_PREFIX}{name}",
        "title": title,
        "description": description,
        **{key: value for key, value in schema.items() if key not in ("title", "description")},
    }


def _model_schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema(mode="validation")


def json_schemas() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema, for every schema the contract publishes."""
    schemas: dict[str, dict[str, Any]] = {}
    for name, kind in CATALOGUE.items():
        file_name = f"touchpoint.{name}.schema.json"
        schemas[file_name] = _documented(
            _model_schema(TOUCHPOINT_MODELS[name]),
            file_name,
            f"{name} touchpoint",
            f"{kind.description} Business area: {kind.area}.{_ENVELOPE_NOTE}",
        )
    schemas["touchpoint.schema.json"] = _documented(
        ANY_TOUCHPOINT.json_schema(mode="validation"),
        "touchpoint.schema.json",
        "Touchpoint",
        "Any touchpoint of the catalogue; `type` selects the variant." + _ENVELOPE_NOTE,
    )
    schemas["friction.schema.json"] = _documented(
        _model_schema(FrictionEvent),
        "friction.schema.json",
        "Friction event",
        "A friction found in a customer's journey, as published on the `friction` topic.",
    )
    schemas["dead_letter.schema.json"] = _documented(
        _model_schema(DeadLetter),
        "dead_letter.schema.json",
        "Dead letter",
        "A refused message as written to `touchpoints.dlq`: the error and the original bytes.",
    )
    return schemas


def export_json_schemas(directory: Path) -> list[Path]:
    """Write every published JSON Schema into `directory`; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for file_name, schema in json_schemas().items():
        path = directory / file_name
        path.write_bytes(orjson.dumps(schema, option=orjson.OPT_INDENT_2) + b"\n")
        written.append(path)
    return written
