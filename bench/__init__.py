"""The benchmark harness of conversion-relay (`python -m bench.run`, `make bench`)."""
