"""Every message the config loader makes, as `check-config` shows it: secret values masked,
the loader's own words never (issue 25, finding 2). A property test: broken configs are drawn
at random (wrong types and values anywhere, unknown keys named like secrets, missing sections,
missing variables, unknown protocols), with secrets planted in every secret field; each
message is compared with the same message made without any redaction."""

from __future__ import annotations

import copy
from typing import Any
from unittest import mock

import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from service import config as config_module
from service.cli.check import shown_problem
from service.config import parse_config
from service.core import redact as redact_module
from service.core.redact import forget_secrets
from service.devtools.dev import dev_config_text
from service.errors import ConfigError

# Words a message is made of, and words a careless rule took for secret values. (Not `Bearer`:
# an echoed value `Bearer environment` has the form of a credential, and is masked on purpose.)
WORDS = (
    "environment", "variable", "password", "token", "key", "secret", "auth", "expected",
    "is", "not", "set", "required", "value", "api_key", "sig", "credentials", "hmac",
)  # fmt: skip
SECRET_LIKE_KEYS = (
    "api_key", "token", "password", "secret", "x-secret-key", "auth", "sig", "hmac",
    "sasl_password", "access_key", "credentials", "signature", "Authorization", "cookie",
)  # fmt: skip
ENV_NAMES = ("KAFKA_PASSWORD", "API_TOKEN", "REDIS_URL", "UNSET_ONE")


def _base() -> dict[str, Any]:
    urls = {
        name: f"http://127.0.0.1:{9000 + i}"
        for i, name in enumerate(
            ("sustain_impact", "sales_ninja", "expertsender", "altcraft", "conductrics", "crm_hook")
        )
    }
    data: dict[str, Any] = yaml.safe_load(dev_config_text("127.0.0.1:9092", 8080, urls))
    return data


BASE = _base()


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path] if path else []
    if isinstance(node, dict):
        for key, child in node.items():
            found += _paths(child, (*path, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found += _paths(child, (*path, index))
    return found


PATHS = _paths(BASE)
secrets = st.text(alphabet="abcdefghkmnpqrstuvwxyz0123456789-_", min_size=6, max_size=16).map(
    lambda tail: f"Zq9{tail}"
)
scalars = st.one_of(
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.booleans(),
    st.none(),
    st.sampled_from(WORDS),
    st.lists(st.sampled_from(WORDS), max_size=3).map(" ".join),
    st.sampled_from(["${UNSET_ONE}", "${KAFKA_PASSWORD}", "${API_TOKEN}", "${UNSET_ONE:-x}"]),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.sampled_from((*WORDS, *SECRET_LIKE_KEYS)), scalars, max_size=3),
)
mutations = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.sampled_from(PATHS), values),
        st.tuples(st.just("delete"), st.sampled_from(PATHS), st.none()),
        st.tuples(st.just("add"), st.just(()), st.sampled_from(SECRET_LIKE_KEYS)),
    ),
    min_size=1,
    max_size=6,
)


def _at(node: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        node = node[step]
    return node


def _mutated(steps: list[tuple[str, tuple[Any, ...], Any]], section_key: str) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    for kind, path, value in steps:
        try:
            parent = _at(data, path[:-1]) if path else None
        except (KeyError, IndexError, TypeError):
            continue
        if kind == "add":  # an unknown key named like a secret, in a section
            section = data.get(section_key)
            if isinstance(section, dict):
                section[value] = "${API_TOKEN}"
            continue
        if not isinstance(parent, dict | list):
            continue
        try:
            if kind == "set":
                parent[path[-1]] = value
            elif isinstance(parent, dict):
                parent.pop(path[-1], None)
        except (IndexError, TypeError):
            continue
    return data


def _plant(data: dict[str, Any], planted: list[str]) -> None:
    """A secret in every secret field (and the variables that hold one)."""
    kafka = data.get("kafka")
    if isinstance(kafka, dict):
        kafka.setdefault("sasl_password", "${KAFKA_PASSWORD}")
    vendors = data.get("vendors")
    if isinstance(vendors, dict):
        for index, entry in enumerate(vendors.values()):
            if isinstance(entry, dict):
                for field in ("api_key", "token"):
                    if field in entry:
                        entry[field] = planted[index % len(planted)]
                headers = entry.get("headers")
                if isinstance(headers, dict) and "Authorization" in headers:
                    headers["Authorization"] = f"Bearer {planted[-1]}"


def _problems(
    data: dict[str, Any], env: dict[str, str], redacting: bool, known: set[str] | None = None
) -> list[str]:
    """The messages as check-config shows them, or as made with no redaction at all; `known`
    gets the values the loader remembered as secrets (every value under a secret key)."""
    forget_secrets()
    try:
        if redacting:
            parse_config(copy.deepcopy(data), env)
        else:
            with (
                mock.patch.object(config_module._Resolution, "scrub", lambda self, text: text),
                mock.patch.object(config_module, "redact", lambda text: text),
            ):
                parse_config(copy.deepcopy(data), env)
    except ConfigError as exc:
        return [shown_problem(p) if redacting else p for p in exc.problems]
    finally:
        if known is not None:
            known.update(redact_module._KNOWN.values)
        forget_secrets()
    return []


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(
    steps=mutations,
    section_key=st.sampled_from(["kafka", "http", "dlq", "pipeline", "dedup"]),
    planted=st.lists(secrets, min_size=3, max_size=3, unique=True),
    env_present=st.sets(st.sampled_from(ENV_NAMES[:3])),
)
def test_config_messages_mask_planted_secrets_and_keep_every_word_of_the_loader(
    steps: list[tuple[str, tuple[Any, ...], Any]],
    section_key: str,
    planted: list[str],
    env_present: set[str],
) -> None:
    """Shown == unredacted wherever the unredacted text holds no secret value; no planted
    secret is ever shown."""
    data = _mutated(steps, section_key)
    _plant(data, planted)
    env = {
        "KAFKA_PASSWORD": planted[0],
        "API_TOKEN": planted[1],
        "REDIS_URL": f"redis://user:{planted[2]}@redis:6379/0",
    }
    env = {name: value for name, value in env.items() if name in env_present}
    known: set[str] = set()
    shown = _problems(data, env, redacting=True, known=known)
    raw = _problems(data, env, redacting=False)
    # The user's own values under secret keys are secrets too (`password: environment` makes
    # the word a secret, masked wherever it appears); env values are masked the same way.
    secret_values = {*planted, *known, *(v for v in env.values() if len(v) >= 3)}
    event(f"problems: {min(len(raw), 5)}{'+' if len(raw) >= 5 else ''}")
    event(f"a secret in a raw message: {any(s in p for p in raw for s in planted)}")
    assert len(shown) == len(raw)
    for plain, masked in zip(raw, shown, strict=True):
        for secret in planted:
            assert secret not in masked, masked
        if not any(secret in plain for secret in secret_values):
            assert masked == plain, f"an ordinary word was masked:\n{plain}\n{masked}"


def test_a_missing_password_variable_is_shown_word_for_word() -> None:
    """The issue's own case: `environment` is a word of the message, not the password."""
    data = copy.deepcopy(BASE)
    data["kafka"]["sasl_password"] = "${KAFKA_PASSWORD}"
    data["kafka"]["security_protocol"] = "SASL_SSL"
    shown = _problems(data, {}, redacting=True)
    assert "kafka.sasl_password: environment variable KAFKA_PASSWORD is not set" in shown
