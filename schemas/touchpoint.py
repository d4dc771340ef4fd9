"""The touchpoint models: one envelope model per catalogue type, all sharing `Touchpoint`.

Each type gets its own model, generated from the catalogue, whose `properties`
field is typed by that type's properties model. Decoding looks the model up by
`type` (a dict lookup), so only one model is tried per event; the JSON Schema of
each model, and of their union discriminated on `type`, comes out of the same
definitions that validate.
"""

import operator
from collections.abc import Mapping
from functools import reduce
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, Discriminator, Field, TypeAdapter, create_model
from pydantic_core import PydanticCustomError

from schemas.catalogue import CATALOGUE, TouchpointKind
from schemas.envelope import Envelope
from schemas.values import IdentityText


def _never_untyped(value: str) -> str:
    raise PydanticCustomError(
        "untyped_touchpoint",
        "Touchpoint is the common base; build one with TOUCHPOINT_MODELS[type] "
        "or schemas.codec.validate_touchpoint",
    )


class Touchpoint(Envelope):
    """Base of every touchpoint model; narrow `properties` with isinstance."""

    # Only the per-type subclasses, which override `type` with a literal, can be
    # validated: the base alone would skip the checks of the type's properties.
    type: Annotated[str, AfterValidator(_never_untyped)]


def identity_key(tp: Touchpoint) -> str:
    """The id the customer is known by in this event: customer_id, else anonymous_id."""
    if tp.customer_id is not None:
        return tp.customer_id
    if tp.anonymous_id is not None:
        return tp.anonymous_id
    raise ValueError(f"touchpoint {tp.event_id} has neither customer_id nor anonymous_id")


def _class_name(type_name: str) -> str:
    return "".join(part.title() for part in type_name.split("_")) + "Touchpoint"


def _touchpoint_model(kind: TouchpointKind) -> type[Touchpoint]:
    properties_optional = not any(
        field.is_required() for field in kind.properties.model_fields.values()
    )
    fields: dict[str, Any] = {
        # A runtime literal: the catalogue, not the source, names the types.
        "type": (Literal.__getitem__(kind.name), Field(description=kind.description)),
        "properties": (
            kind.properties,
            Field(default_factory=kind.properties) if properties_optional else Field(),
        ),
    }
    if kind.requires_case_id:
        fields["case_id"] = (str, Field(description=Envelope.model_fields["case_id"].description))
    if kind.requires_both_ids:
        fields["customer_id"] = (
            IdentityText,
            Field(description=Envelope.model_fields["customer_id"].description),
        )
        fields["anonymous_id"] = (
            IdentityText,
            Field(description="The anonymous id that now belongs to customer_id."),
        )
    model: type[Touchpoint] = create_model(
        _class_name(kind.name),
        __base__=Touchpoint,
        __module__=__name__,
        __doc__=kind.description,
        **fields,
    )
    return model


TOUCHPOINT_MODELS: Final[Mapping[str, type[Touchpoint]]] = MappingProxyType(
    {name: _touchpoint_model(kind) for name, kind in CATALOGUE.items()}
)
"""Touchpoint type name -> its envelope model."""

_union: Any = reduce(operator.or_, TOUCHPOINT_MODELS.values())
ANY_TOUCHPOINT: Final[TypeAdapter[Touchpoint]] = TypeAdapter(
    Annotated[_union, Discriminator("type")]
)
"""Every touchpoint model as one union discriminated on `type` (for JSON Schema)."""
