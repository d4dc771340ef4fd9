"""Friction detection as pure code: the rules, their state and their configuration."""

from projections.friction.config import RULES, FrictionConfig, FrictionConfigError, load_config
from projections.friction.rules import Finding, detect, expire, next_deadline
from projections.friction.state import FrictionState

__all__ = [
    "RULES",
    "Finding",
    "FrictionConfig",
    "FrictionConfigError",
    "FrictionState",
    "detect",
    "expire",
    "load_config",
    "next_deadline",
]
