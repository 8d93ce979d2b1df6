"""The vendor protocols: one module each, registered here by their `protocol` tag."""

from __future__ import annotations

from collections.abc import Callable

from service.vendors.base import Adapter, VendorBase
from service.vendors.goal_reach import GoalReachAdapter, GoalReachConfig

# Each protocol's config Struct (tagged by `protocol`) and the adapter built from it.
VendorConfig = GoalReachConfig
PROTOCOLS: dict[type[VendorBase], Callable[[str, VendorBase], Adapter]] = {
    GoalReachConfig: lambda name, cfg: GoalReachAdapter(name, cfg),  # type: ignore[arg-type]
}


def make_adapter(vendor: str, config: VendorBase) -> Adapter:
    """Build the adapter for a vendor's configured protocol."""
    return PROTOCOLS[type(config)](vendor, config)
