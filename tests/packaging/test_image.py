"""The image is really built (`scripts/build-image.sh`, what `make image` runs) and really run:
its own entrypoint, as UID 10001, on a read-only root, against the test broker and a sandbox on
the host loopback, answers /livez and /readyz and delivers an event.

Needs root and buildah (installed by scripts/install-buildah.sh where apt-get works); skips with
that reason elsewhere. The stand-in base images and the dependency layer stay in buildah's
storage, so a repeated run rebuilds only the project layer.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from service.devtools.demo import sample_lines
from service.devtools.publish import publish
from service.net import free_port
from tests.conftest import goal_reach_vendor, relay_config, wait_for

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "localhost/conversion-relay:packaging-test"
UID = 10001
# The official slim base is ~125 MB; the Debian stand-in used where it cannot be pulled is more.
MAX_SIZE_MB = 400


def buildah() -> str:
    """buildah, installed by the project's script if need be; skips where that is impossible."""
    if os.geteuid() != 0:
        pytest.skip("building and running the image needs root (buildah, chroot, mounts)")
    if shutil.which("buildah") is None or shutil.which("debootstrap") is None:
        subprocess.run(
            ["bash", str(ROOT / "scripts" / "install-buildah.sh")],
            capture_output=True,
            timeout=600,
            check=False,
        )
    found = shutil.which("buildah")
    if found is None or shutil.which("debootstrap") is None:
        pytest.skip("buildah/debootstrap not installable here (scripts/install-buildah.sh)")
    return found


@pytest.fixture(scope="module")
def image() -> Iterator[dict[str, Any]]:
    """The image built by scripts/build-image.sh with buildah; its config and its root mounted."""
    tool = buildah()
    built = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-image.sh")],
        env={**os.environ, "IMAGE": IMAGE, "BUILDER": "buildah"},
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
        cwd=ROOT,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    inspected = subprocess.run(
        [tool, "inspect", "--type", "image", IMAGE], capture_output=True, text=True, check=True
    )
    config = json.loads(inspected.stdout)["Docker"]["config"]
    size = subprocess.run(
        [tool, "images", "--format", "{{.Size}}", IMAGE], capture_output=True, text=True
    ).stdout.split("\n")[0]
    container = subprocess.run(
        [tool, "from", "--pull=never", IMAGE], capture_output=True, text=True, check=True
    ).stdout.strip()
    root = subprocess.run(
        [tool, "mount", container], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        yield {"config": config, "root": root, "size": size, "log": built.stdout}
    finally:
        subprocess.run([tool, "umount", container], capture_output=True, check=False)
        subprocess.run([tool, "rm", container], capture_output=True, check=False)


def run_entrypoint(image: dict[str, Any], config_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    """The image's ENTRYPOINT + CMD as its USER, in a private mount namespace: the image root
    bound read-only, /proc, /dev, a tmpfs /tmp, the config over /etc/conversion-relay, the host
    network (loopback) shared."""
    config = image["config"]
    user = config["User"]
    env = list(config["Env"])
    argv = [*config["Entrypoint"], *config["Cmd"]]
    script = (
        'set -e; r=$(mktemp -d); mount --bind "$1" "$r"; mount -o remount,bind,ro "$r"; '
        'mount -t proc proc "$r/proc"; mount --rbind /dev "$r/dev"; '
        'mount -t tmpfs tmpfs "$r/tmp"; mount --bind "$2" "$r/etc/conversion-relay"; '
        'u=$3; w=$4; shift 4; exec chroot --userspec="$u" "$r" '
        'env -i --chdir="$w" "$@"'
    )
    return subprocess.Popen(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
            image["root"],
            str(config_dir),
            user,
            config["WorkingDir"],
            *env,
            *argv,
        ],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


async def test_the_built_image_runs_as_10001_read_only_and_delivers(
    image: dict[str, Any], broker, topics, sandbox_factory, tmp_path: Path
) -> None:
    """Built in docker format (HEALTHCHECK kept), the image's own entrypoint serves /livez and
    /readyz and delivers one event, as UID 10001 on a read-only root; its size is reported."""
    config = image["config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["Healthcheck"]["Test"][0] == "CMD"
    assert config["Entrypoint"] == ["conversion-relay"]
    sandbox = await sandbox_factory()
    port = free_port()
    relay = relay_config(broker, topics, {"sustain_impact": goal_reach_vendor(sandbox)})
    relay["http"] = {"host": "127.0.0.1", "port": port}
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    # The image's CMD reads /etc/conversion-relay/config.yaml: the test's config goes there.
    (config_dir / "config.yaml").write_text(yaml.safe_dump(relay))
    config_dir.chmod(0o755)
    (config_dir / "config.yaml").chmod(0o644)
    log = tmp_path / "relay.log"
    process = run_entrypoint(image, config_dir, log)
    try:
        url = f"http://127.0.0.1:{port}"
        for path in ("/livez", "/readyz"):
            await wait_ok(url + path, process, log)
        line = next(line for line in sample_lines(20, seed=3) if b'"goal":"purchase"' in line)
        await publish(broker.bootstrap, topics.source, [line])
        await wait_for(lambda: len(sandbox.accepted) == 1, 60, "one delivery from the image")
        # unshare, sh, chroot and env each exec the next: the pid is the relay's own.
        assert f"Uid:\t{UID}\t{UID}\t{UID}" in proc_file(process.pid, "status")
        [root_mount] = [
            line.split()
            for line in proc_file(process.pid, "mountinfo").splitlines()
            if line.split()[4] == "/"
        ]
        assert "ro" in root_mount[5].split(","), root_mount
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    assert process.returncode == 0, tail(log)
    value, unit = image["size"].split()
    size_mb = float(value) * {"kB": 0.001, "MB": 1.0, "GB": 1000.0}[unit]
    sys.stdout.write(f"\nimage {IMAGE}: {image['size']}\n")
    assert 0 < size_mb < MAX_SIZE_MB, image["size"]


def tail(log: Path) -> str:
    """The end of the relay's output."""
    return log.read_text(errors="replace")[-3000:]


def proc_file(pid: int, name: str) -> str:
    """/proc/<pid>/<name> of a running process."""
    return Path(f"/proc/{pid}/{name}").read_text()


async def wait_ok(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Until the URL answers 200; fails early if the relay exits."""
    last: object = None
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            assert process.poll() is None, tail(log)
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
                    last = resp.status
            except aiohttp.ClientError as exc:
                last = exc
            await asyncio.sleep(0.2)
    raise AssertionError(f"{url}: {last}\n{tail(log)}")
