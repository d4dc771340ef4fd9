"""The product shell: settings, CLI, producer SDK, local stack, HTTP API, demo."""

__version__ = "0.1.0"
