"""Analyst questions as pure data: specs, their parsers and result shapes; no SQL, no I/O."""
