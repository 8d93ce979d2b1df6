"""Baselines: relays as a user would write them, kept small (bench/README.md says how they run)."""
