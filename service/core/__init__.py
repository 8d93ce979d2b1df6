"""Pure policy: no I/O, no event loop, clocks and randomness passed in."""
