"""Property models of in-person touchpoints: store visits and appointments."""

from typing import Literal

from schemas.envelope import TouchpointProperties


class StoreVisitProperties(TouchpointProperties):
    """The customer visited a store."""

    store_id: str


class AppointmentProperties(TouchpointProperties):
    """An appointment was booked, attended or missed."""

    kind: str
    status: Literal["booked", "attended", "missed"]
