"""Unit tests of the stream wiring, with the broker replaced by fakes."""
