"""Imports every command module so that each registers its commands on the app."""

# ruff: noqa: F401
from journey.cli import analysis, demo, dlq, funnel, info, run, schema, sql, stack
