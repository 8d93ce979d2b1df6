"""The protocol registries: config tag → config Struct → adapter, and tag → sandbox contract."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from service.sandbox.altcraft import AltcraftContract
from service.sandbox.conductrics import ConductricsContract
from service.sandbox.expertsender import ExpertSenderContract
from service.sandbox.goal_reach import GoalReachContract
from service.sandbox.registry import CONTRACTS, contract_for
from service.sandbox.webhook import WebhookContract
from service.vendors import PROTOCOLS, VendorConfig, make_adapter, protocol_tag
from service.vendors.altcraft import AltcraftAdapter, AltcraftConfig
from service.vendors.conductrics import ConductricsAdapter, ConductricsConfig
from service.vendors.expertsender import ExpertSenderAdapter, ExpertSenderConfig
from service.vendors.goal_reach import GoalReachAdapter, GoalReachConfig
from service.vendors.webhook import WebhookAdapter, WebhookConfig

MINIMAL: dict[str, dict[str, Any]] = {
    "goal_reach": {},
    "expertsender": {"api_key": "k"},
    "altcraft": {"token": "t", "db_id": 1, "pixel_id": 1},
    "conductrics": {"account": "ac-1", "api_key": "k"},
    "webhook": {"path": "/hook"},
}
KINDS = {
    "goal_reach": (GoalReachConfig, GoalReachAdapter, GoalReachContract),
    "expertsender": (ExpertSenderConfig, ExpertSenderAdapter, ExpertSenderContract),
    "altcraft": (AltcraftConfig, AltcraftAdapter, AltcraftContract),
    "conductrics": (ConductricsConfig, ConductricsAdapter, ConductricsContract),
    "webhook": (WebhookConfig, WebhookAdapter, WebhookContract),
}


def vendor_config(tag: str) -> Any:
    """The smallest valid config of a protocol."""
    raw = {"protocol": tag, "base_url": "https://v.example.com", **MINIMAL[tag]}
    return msgspec.convert(raw, VendorConfig)


@pytest.mark.parametrize("tag", sorted(KINDS))
def test_each_protocol_tag_decodes_to_its_config_and_adapter(tag: str) -> None:
    """The `protocol` tag picks the config Struct, and the registry builds the matching adapter."""
    config_type, adapter_type, _ = KINDS[tag]
    config = vendor_config(tag)
    assert type(config) is config_type
    assert protocol_tag(config) == tag
    adapter = make_adapter("v", config)
    assert type(adapter) is adapter_type
    assert adapter.protocol == tag


def test_every_config_struct_is_registered() -> None:
    """No protocol is decodable without an adapter factory, and none is registered twice."""
    assert set(PROTOCOLS) == {kinds[0] for kinds in KINDS.values()}


def test_unknown_protocol_is_a_config_error() -> None:
    """A `protocol` nobody implements fails decoding with the tag named."""
    with pytest.raises(msgspec.ValidationError, match="protocol"):
        msgspec.convert({"protocol": "smoke_signals", "base_url": "https://x"}, VendorConfig)


def test_a_factory_refuses_another_protocols_config() -> None:
    """A factory handed the wrong config type says so instead of building a broken adapter."""
    with pytest.raises(TypeError, match="not a ExpertSenderConfig"):
        PROTOCOLS[ExpertSenderConfig]("v", vendor_config("altcraft"))


@pytest.mark.parametrize("tag", sorted(KINDS))
def test_every_protocol_has_a_sandbox(tag: str) -> None:
    """Dev mode can start a strict sandbox for every protocol, pinned or not."""
    contract_type = KINDS[tag][2]
    assert type(contract_for(tag)) is contract_type
    assert type(contract_for(tag, vendor_config(tag))) is contract_type
    assert contract_for(tag).name == tag
    assert set(CONTRACTS) == set(KINDS)


def test_pinned_contracts_take_the_vendors_own_settings() -> None:
    """Given a vendor config, the sandbox insists on its key, token, account and path."""
    expertsender = contract_for("expertsender", vendor_config("expertsender"))
    assert isinstance(expertsender, ExpertSenderContract) and expertsender.api_keys == {"k"}
    altcraft = contract_for("altcraft", vendor_config("altcraft"))
    assert isinstance(altcraft, AltcraftContract) and altcraft.tokens == {"t"}
    conductrics = contract_for("conductrics", vendor_config("conductrics"))
    assert isinstance(conductrics, ConductricsContract)
    assert (conductrics.account, conductrics.api_key) == ("ac-1", "k")
    webhook = contract_for("webhook", vendor_config("webhook"))
    assert isinstance(webhook, WebhookContract) and webhook.method == "POST"
    assert webhook.pattern is not None and webhook.pattern.match("/hook")


def test_registry_refuses_unknown_or_mismatched_protocols() -> None:
    """An unknown tag, or a config of another protocol, is a clear error."""
    with pytest.raises(ValueError, match="no sandbox for protocol 'fax'"):
        contract_for("fax")
    with pytest.raises(ValueError, match="config is for 'altcraft', not 'webhook'"):
        contract_for("webhook", vendor_config("altcraft"))
