"""Which sandbox contract fakes which protocol, so dev mode can start one per configured vendor."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from service.sandbox.altcraft import AltcraftContract
from service.sandbox.base import Contract
from service.sandbox.conductrics import ConductricsContract
from service.sandbox.expertsender import ExpertSenderContract
from service.sandbox.goal_reach import GoalReachContract
from service.sandbox.webhook import WebhookContract
from service.vendors import protocol_tag
from service.vendors.altcraft import AltcraftConfig
from service.vendors.base import VendorBase
from service.vendors.conductrics import ConductricsConfig
from service.vendors.expertsender import ExpertSenderConfig
from service.vendors.webhook import WebhookConfig

# Protocol tag → a contract that accepts any well-formed credentials, account and path.
CONTRACTS: Mapping[str, Callable[[], Contract]] = MappingProxyType(
    {
        "goal_reach": GoalReachContract,
        "expertsender": ExpertSenderContract,
        "altcraft": AltcraftContract,
        "conductrics": ConductricsContract,
        "webhook": WebhookContract,
    }
)


def _pinned(config: VendorBase) -> Contract | None:
    """A contract that also insists on the vendor's own credentials, account or path."""
    if isinstance(config, ExpertSenderConfig):
        return ExpertSenderContract(api_keys={config.api_key})
    if isinstance(config, AltcraftConfig):
        return AltcraftContract(tokens={config.token})
    if isinstance(config, ConductricsConfig):
        return ConductricsContract(account=config.account, api_key=config.api_key)
    if isinstance(config, WebhookConfig):
        return WebhookContract(path=config.path, method=config.method)
    return None


def contract_for(protocol: str, config: VendorBase | None = None) -> Contract:
    """The strict contract for a protocol tag; given the vendor's config, pinned to it."""
    if protocol not in CONTRACTS:
        known = ", ".join(sorted(CONTRACTS))
        raise ValueError(f"no sandbox for protocol {protocol!r} (known: {known})")
    if config is not None:
        if protocol_tag(config) != protocol:
            raise ValueError(f"config is for {protocol_tag(config)!r}, not {protocol!r}")
        pinned = _pinned(config)
        if pinned is not None:
            return pinned
    return CONTRACTS[protocol]()
