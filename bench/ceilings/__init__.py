"""Ceilings: what the parts do alone here (Kafka consume + decode; a plain HTTP client)."""
