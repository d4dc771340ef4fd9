"""The event contract: pydantic models of every touchpoint, the friction event, the codec."""
