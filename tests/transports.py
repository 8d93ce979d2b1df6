"""The relay's transports for tests: every kind `http.transport` offers, built as the relay does."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, get_args

import msgspec

from service.config import HttpConfig
from service.delivery.transport import Transport, make_transport
from service.vendors.base import TransportName, VendorBase

# Every transport a test parametrised "by transport" runs on.
TRANSPORTS: tuple[str, ...] = get_args(TransportName)


class PlainVendor(VendorBase, tag="plain", frozen=True, kw_only=True):
    """A vendor config with only the settings every protocol shares (timeouts, pool, transport)."""

    def goal_ids(self) -> Mapping[str, str]:
        """No goals."""
        return {}


def plain_vendor(base_url: str = "http://127.0.0.1", **config: Any) -> PlainVendor:
    """A validated vendor config; `config` are VendorBase settings (timeout_s, concurrency...)."""
    return msgspec.convert({"base_url": base_url, **config}, PlainVendor)


def transport_for(
    kind: str, base_url: str = "http://127.0.0.1", ca_bundle: str | None = None, **config: Any
) -> Transport:
    """The transport the relay would build for a vendor with these settings, on `kind`."""
    http = msgspec.convert({"transport": kind, "ca_bundle": ca_bundle}, HttpConfig)
    return make_transport("v", plain_vendor(base_url, **config), http)
