"""Imports every command module so that each registers its commands on the app."""

# ruff: noqa: F401
from journey.cli import (
    alerts,
    analysis,
    collector,
    cx,
    demo,
    dlq,
    friction,
    funnel,
    info,
    run,
    samples,
    schema,
    sql,
    stack,
)
