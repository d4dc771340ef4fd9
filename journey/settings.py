"""The engine's settings for the shell: the one Settings class lives in streams/settings.py."""

from streams.settings import LOCAL_KAFKA_HOST, Settings

__all__ = ["LOCAL_KAFKA_HOST", "Settings"]
