"""Errors a person can act on: each message is one line naming what is wrong and the fix."""


class JourneyError(Exception):
    """Base of every error the CLI reports as one line without a traceback."""


class ConfigurationError(JourneyError):
    """A setting or an argument is wrong."""


class ServiceUnavailableError(JourneyError):
    """Kafka, ClickHouse or the worker cannot be reached."""
