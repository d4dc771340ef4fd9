"""Kafka wiring: the Faust app, topics, the validator and sink agents."""
