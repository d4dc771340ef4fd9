"""The event contract: pydantic models of every touchpoint, the friction event, the codec."""

from schemas.catalogue import CATALOGUE, SERVICE_TYPES, TOUCHPOINT_TYPES, BusinessArea
from schemas.codec import (
    MAX_TOUCHPOINT_BYTES,
    InvalidTouchpointError,
    Reason,
    decode_json,
    decode_stored_touchpoint,
    decode_touchpoint,
    encode_json,
    encode_touchpoint,
    normalise,
    validate_touchpoint,
)
from schemas.dead_letter import DeadLetter
from schemas.envelope import Channel
from schemas.friction import FrictionEvent, Severity, friction_id_for
from schemas.touchpoint import TOUCHPOINT_MODELS, Touchpoint, identity_key

__all__ = [
    "CATALOGUE",
    "MAX_TOUCHPOINT_BYTES",
    "SERVICE_TYPES",
    "TOUCHPOINT_MODELS",
    "TOUCHPOINT_TYPES",
    "BusinessArea",
    "Channel",
    "DeadLetter",
    "FrictionEvent",
    "InvalidTouchpointError",
    "Reason",
    "Severity",
    "Touchpoint",
    "decode_json",
    "decode_stored_touchpoint",
    "decode_touchpoint",
    "encode_json",
    "encode_touchpoint",
    "friction_id_for",
    "identity_key",
    "normalise",
    "validate_touchpoint",
]
