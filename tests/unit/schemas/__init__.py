"""Unit tests of the event contract package `schemas`."""
