"""Errors a person can act on, for the shell: they live in projections/errors.py."""

from projections.errors import ConfigurationError, JourneyError, ServiceUnavailableError

__all__ = ["ConfigurationError", "JourneyError", "ServiceUnavailableError"]
