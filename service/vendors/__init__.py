"""The vendor protocols: one module each, registered here by their `protocol` tag."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias, TypeVar

from service.vendors.altcraft import AltcraftAdapter, AltcraftConfig
from service.vendors.base import Adapter, VendorBase
from service.vendors.conductrics import ConductricsAdapter, ConductricsConfig
from service.vendors.expertsender import ExpertSenderAdapter, ExpertSenderConfig
from service.vendors.goal_reach import GoalReachAdapter, GoalReachConfig
from service.vendors.webhook import WebhookAdapter, WebhookConfig

# Every protocol's config Struct; msgspec picks the one named by the `protocol` tag.
VendorConfig: TypeAlias = (
    GoalReachConfig | ExpertSenderConfig | AltcraftConfig | ConductricsConfig | WebhookConfig
)
AdapterFactory = Callable[[str, VendorBase], Adapter]
_C = TypeVar("_C", bound=VendorBase)


def _factory(cls: type[_C], make: Callable[[str, _C], Adapter]) -> AdapterFactory:
    """An adapter factory that checks it was given its own protocol's config."""

    def build(vendor: str, config: VendorBase) -> Adapter:
        if not isinstance(config, cls):
            raise TypeError(f"{vendor}: {type(config).__name__} is not a {cls.__name__}")
        return make(vendor, config)

    return build


# Each protocol's config Struct (tagged by `protocol`) and the adapter built from it.
PROTOCOLS: dict[type[VendorBase], AdapterFactory] = {
    GoalReachConfig: _factory(GoalReachConfig, GoalReachAdapter),
    ExpertSenderConfig: _factory(ExpertSenderConfig, ExpertSenderAdapter),
    AltcraftConfig: _factory(AltcraftConfig, AltcraftAdapter),
    ConductricsConfig: _factory(ConductricsConfig, ConductricsAdapter),
    WebhookConfig: _factory(WebhookConfig, WebhookAdapter),
}


def protocol_tag(config: VendorBase) -> str:
    """The `protocol` value a vendor config was tagged with (e.g. "altcraft")."""
    return str(type(config).__struct_config__.tag)


def make_adapter(vendor: str, config: VendorBase) -> Adapter:
    """Build the adapter for a vendor's configured protocol."""
    return PROTOCOLS[type(config)](vendor, config)
