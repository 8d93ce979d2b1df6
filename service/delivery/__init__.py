"""The I/O shells of delivery: pipeline, sender, rate limiters, dedup and dead letters."""
