"""Property model of the identify touchpoint, which links an anonymous id to a customer."""

from typing import Any

from schemas.envelope import TouchpointProperties


class IdentifyProperties(TouchpointProperties):
    """The anonymous id now belongs to the customer, past and future events alike."""

    traits: dict[str, Any] | None = None
