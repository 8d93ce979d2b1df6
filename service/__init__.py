"""conversion-relay: Kafka conversion events to vendors' goal APIs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("conversion-relay")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"
