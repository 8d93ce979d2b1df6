"""A real Prometheus (Debian's package) scrapes two relay installs with known traffic: every
dashboard panel's query answers what the vendor sandboxes saw, and the alert rules, loaded as
they ship, hold only the alert the traffic deserves.

Install A runs in this process with three vendors (alpha delivers and has 12 events refused,
beta maps one goal, gamma skips every event on purpose) and 2 % malformed records; install B is
`run --workers 2` with one vendor. Both are scraped under a job whose name has nothing to do
with "conversion-relay", told apart by a namespace label, as the Prometheus operator sets it.

Rates are evaluated with the range set to the whole test window and at the instant of the
target's last scrape, so rate × window is the exact increase and is compared with the counts.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from service.devtools.demo import sample_lines
from service.devtools.embedded import create_topics, free_port
from service.devtools.publish import publish
from service.workers import WORKER_LABEL
from tests.conftest import GOAL_PURCHASE, goal_reach_vendor, relay_config, wait_for

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "conversion-relay.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
JOB = "payments-relay"  # any name: the dashboard and rules must not care
VALID_A, INVALID_EVERY, REFUSED_A = 600, 50, 12
VALID_B = 300
MIB = 1024 * 1024


def prometheus_binary() -> str:
    """Debian's prometheus server (scripts/install-promtool.sh installs the package as root)."""
    found = shutil.which("prometheus")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(
            ["bash", str(ROOT / "scripts" / "install-promtool.sh")],
            capture_output=True,
            timeout=300,
            check=False,
        )
        found = shutil.which("prometheus")
    if found is None:
        pytest.skip(
            "prometheus not found and not installable here (needs root and apt-get: "
            "scripts/install-promtool.sh installs Debian's prometheus package)"
        )
    return found


class Prometheus:
    """A Prometheus server on a free loopback port, scraping every second."""

    def __init__(self, binary: str, workdir: Path, targets: dict[str, int]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "900ms",
                "evaluation_interval": "1s",
            },
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {
                    "job_name": JOB,
                    "static_configs": [
                        {"targets": [f"127.0.0.1:{port}"], "labels": {"namespace": namespace}}
                        for namespace, port in targets.items()
                    ],
                }
            ],
        }
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "prometheus.log"
        self._args = [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Launch the server."""
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(self._args, stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        """Stop the server and wait for it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def logs(self) -> str:
        """The tail of the server's log."""
        return self.log_path.read_text(errors="replace")[-3000:]

    async def query(
        self, expr: str, at_s: float | None = None
    ) -> list[tuple[dict[str, str], float]]:
        """An instant query: (labels, value) per series."""
        params = {"query": expr}
        if at_s is not None:
            params["time"] = f"{at_s:.3f}"
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.url}/api/v1/query", params=params) as resp,
        ):
            body = await resp.json()
        assert body["status"] == "success", f"{expr}: {body}"
        return [(r["metric"], float(r["value"][1])) for r in body["data"]["result"]]

    async def wait_ready(self, timeout_s: float = 30) -> None:
        """Until /-/ready answers 200."""
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                assert self.process is not None and self.process.poll() is None, self.logs()
                try:
                    async with session.get(f"{self.url}/-/ready") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
        raise AssertionError(f"prometheus not ready:\n{self.logs()}")


def panel_targets() -> dict[str, dict[str, str]]:
    """Panel title → refId → expression, as in the dashboard file."""
    found: dict[str, dict[str, str]] = {}
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                found.setdefault(inner["title"], {})[target["refId"]] = target["expr"]
    return found


PANELS = panel_targets()


def as_grafana_sends(expr: str, window_s: int, namespace: str = ".*", vendor: str = ".*") -> str:
    """The query Grafana sends with these variables, every range set to the test window."""
    expr = expr.replace("$__rate_interval", f"{window_s}s").replace("$__range", f"{window_s}s")
    values = {"namespace": namespace, "job": ".*", "instance": ".*", "vendor": vendor}
    return re.sub(r"\$(namespace|job|instance|vendor)\b", lambda m: values[m.group(1)], expr)


def close(got: float, want: float, what: str) -> None:
    """Equal within 1 % and half an event (floating point, not extrapolation: see above)."""
    assert math.isclose(got, want, rel_tol=0.01, abs_tol=0.5), f"{what}: {got} != {want}"


def invalid_line(index: int) -> bytes:
    return b'{"event_id": "broken-%d", "goal": 42}' % index


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Any]:
    """Make Prometheus servers (skips the test where none can be installed); stops them all."""
    binary = prometheus_binary()
    made: list[Prometheus] = []

    def make(targets: dict[str, int]) -> Prometheus:
        server = Prometheus(binary, tmp_path, targets)
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()


@pytest.fixture
async def two_installs(
    broker, topics, sandbox_factory, run_relay, relay_process, prometheus_factory
) -> AsyncIterator[dict[str, Any]]:
    """Install A (in process, three vendors) and B (--workers 2), scraped by one Prometheus."""
    alpha, beta, gamma, delta = [await sandbox_factory() for _ in range(4)]
    alpha.faults.reject_next = REFUSED_A
    config_a = relay_config(
        broker,
        topics,
        {
            "alpha": goal_reach_vendor(alpha, customer_id_key="sustain_impact"),
            "beta": {
                **goal_reach_vendor(beta, customer_id_key="sales_ninja"),
                "goals": {"purchase": GOAL_PURCHASE},
            },
            "gamma": goal_reach_vendor(gamma, customer_id_key="nobody_sends_this"),
        },
    )
    relay_a = await run_relay(config_a)
    topic_b = f"{topics.source}-b"
    await create_topics(broker.bootstrap, {topic_b: 4, f"{topic_b}.dlq": 1})
    config_b = relay_config(
        broker, topics, {"delta": goal_reach_vendor(delta, customer_id_key="sustain_impact")}
    )
    config_b["kafka"]["topics"] = [topic_b]
    config_b["dlq"] = {"topic": f"{topic_b}.dlq"}
    # CPython's own collector threshold (the relay's 10,000 would make no collection in this
    # short run, and the GC panel would have nothing to show).
    relay_b = relay_process(
        config_b, extra_args=["--workers", "2"], env={"RELAY_GC_THRESHOLD": "700"}
    )
    relay_b.start()
    await relay_b.wait_ready(timeout_s=60)
    assert relay_a.http_port is not None
    server = prometheus_factory({"ns-a": relay_a.http_port, "ns-b": relay_b.http_port})
    server.start()
    await server.wait_ready()

    async def scraped_twice() -> bool:
        return len(await server.query(f'count_over_time(up{{job="{JOB}"}}[10s]) >= 2')) == 2

    deadline = time.monotonic() + 30
    while not await scraped_twice():
        assert time.monotonic() < deadline, server.logs()
        await asyncio.sleep(0.5)
    started_s = time.time() - 1.5  # the window starts on a scrape of the counters at zero

    valid_a = list(sample_lines(VALID_A, seed=11))
    lines_a = []
    for index, line in enumerate(valid_a, start=1):
        lines_a.append(line)
        if index % (INVALID_EVERY - 1) == 0:
            lines_a.append(invalid_line(index))
    invalid_a = len(lines_a) - len(valid_a)
    valid_b = list(sample_lines(VALID_B, seed=12))
    await publish(broker.bootstrap, topics.source, lines_a)
    await publish(broker.bootstrap, topic_b, valid_b)

    events_a = [orjson.loads(line) for line in valid_a]
    sends_alpha = sum(e["goal"] in ("purchase", "signup") for e in events_a)
    sends_beta = sum(
        e["goal"] == "purchase" and "sales_ninja" in e["customer"]["ids"] for e in events_a
    )
    sends_delta = sum(orjson.loads(line)["goal"] in ("purchase", "signup") for line in valid_b)
    await wait_for(
        lambda: (
            len(alpha.accepted) + len(alpha.refused) >= sends_alpha
            and len(beta.accepted) >= sends_beta
            and len(delta.accepted) >= sends_delta
        ),
        90,
        "every delivery",
    )

    async def settled() -> bool:
        """Prometheus' last scrape of each install shows everything terminal and committed."""
        a = await server.query(
            'sum(conversion_relay_deliveries_total{namespace="ns-a", outcome!="retried"})'
            ' + sum(conversion_relay_events_invalid_total{namespace="ns-a"})'
        )
        b = await server.query(
            'sum(conversion_relay_deliveries_total{namespace="ns-b", outcome!="retried"})'
        )
        lag = await server.query(
            "sum(conversion_relay_consumer_lag) + sum(conversion_relay_in_flight)"
        )
        return (
            bool(a and b and lag)
            and a[0][1] == 3 * len(lines_a)
            and b[0][1] == len(valid_b)
            and lag[0][1] == 0
        )

    deadline = time.monotonic() + 60
    while not await settled():
        assert time.monotonic() < deadline, "Prometheus never saw the traffic settle"
        await asyncio.sleep(0.5)
    await asyncio.sleep(1.5)  # one more scrape of the settled state
    at_s = {}
    for namespace in ("ns-a", "ns-b"):
        [(_, at_s[namespace])] = await server.query(f'timestamp(up{{namespace="{namespace}"}})')
    yield {
        "prometheus": server,
        "at_s": at_s,
        "window_s": math.ceil(max(at_s.values()) - started_s),
        "alpha": alpha,
        "beta": beta,
        "gamma": gamma,
        "delta": delta,
        "valid_a": len(valid_a),
        "invalid_a": invalid_a,
        "records_a": len(lines_a),
        "valid_b": len(valid_b),
        "relay_b": relay_b,
    }
    relay_b.signal(signal.SIGTERM)
    await relay_b.wait_exit(60)


async def test_a_real_prometheus_answers_every_panel_and_rule_as_the_sandboxes_saw(
    two_installs: dict[str, Any],
) -> None:
    """Panels of install A, install B and its processes, and the shipped rules, all checked on
    one Prometheus (one setup: it is the slow part)."""
    await check_panels_of_install_a(two_installs)
    await check_install_b_and_its_processes(two_installs)
    await check_rules(two_installs)


async def check_panels_of_install_a(t: dict[str, Any]) -> None:
    """Each panel's query, sent as Grafana would for install A, equals the counts of its
    traffic: records once per topic, deliveries and refusals as the sandboxes saw them,
    invalid records once, dead letters per vendor, one replica up."""
    prom: Prometheus = t["prometheus"]
    w = t["window_s"]
    alpha, beta, gamma = t["alpha"], t["beta"], t["gamma"]
    delivered = {"alpha": len(alpha.accepted), "beta": len(beta.accepted), "gamma": 0}
    refused = {"alpha": len(alpha.refused), "beta": len(beta.refused), "gamma": 0}
    assert refused["alpha"] == REFUSED_A and not gamma.accepted and not gamma.refused
    valid, invalid, records = t["valid_a"], t["invalid_a"], t["records_a"]

    async def panel(title: str, ref: str = "A", **variables: str) -> list[Any]:
        expr = as_grafana_sends(PANELS[title][ref], w, **{"namespace": "ns-a", **variables})
        return await prom.query(expr, t["at_s"]["ns-a"])

    async def single(title: str, ref: str = "A", **variables: str) -> float:
        [(_, value)] = await panel(title, ref, **variables)
        return value

    def by(result: list[Any], *labels: str) -> dict[Any, float]:
        key = (
            (lambda m: m[labels[0]])
            if len(labels) == 1
            else (lambda m: tuple(m[x] for x in labels))
        )
        return {key(metric): value for metric, value in result}

    # Overview
    close(await single("Events consumed /s") * w, records, "records consumed (each once)")
    close(await single("Delivered /s") * w, sum(delivered.values()), "delivered")
    close(
        await single("Error ratio"),
        REFUSED_A / (sum(delivered.values()) + REFUSED_A),
        "error ratio",
    )
    assert await single("Consumer lag") == 0
    close(await single("Invalid records in range"), invalid, "invalid records (each once)")
    close(await single("Vendor dead letters in range"), REFUSED_A, "vendor dead letters")
    assert await single("Replicas up") == 1
    # Per vendor
    ins = by(await panel("Events in / out per second", "A"), "vendor")
    outs = by(await panel("Events in / out per second", "B"), "vendor")
    assert set(ins) == set(outs) == {"alpha", "beta", "gamma"}
    for vendor in ins:
        close(ins[vendor] * w, records, f"{vendor} in")
        close(outs[vendor] * w, valid, f"{vendor} out (every valid event ends once)")
    ratios = by(await panel("Error ratio by vendor"), "vendor")
    close(ratios["alpha"], REFUSED_A / (delivered["alpha"] + REFUSED_A), "alpha error ratio")
    assert ratios["beta"] == 0
    assert "gamma" not in ratios  # gamma sends nothing: no ratio, not NaN
    outcomes = by(await panel("Deliveries by outcome"), "vendor", "outcome")
    for vendor in ("alpha", "beta", "gamma"):
        close(outcomes[vendor, "delivered"] * w, delivered[vendor], f"{vendor} delivered")
        close(outcomes[vendor, "rejected"] * w, refused[vendor], f"{vendor} rejected")
        skipped = valid - delivered[vendor] - refused[vendor]
        close(outcomes[vendor, "skipped"] * w, skipped, f"{vendor} skipped")
    statuses = by(await panel("HTTP requests by status class"), "vendor", "status_class")
    close(statuses["alpha", "2xx"] * w, delivered["alpha"], "alpha 2xx")
    close(statuses["alpha", "4xx"] * w, REFUSED_A, "alpha 4xx")
    close(statuses["gamma", "2xx"] * w, 0, "gamma sends nothing")
    for ref in ("A", "B", "C"):
        latencies = by(await panel("Vendor request latency p50 / p95 / p99", ref), "vendor")
        assert 0 < latencies["alpha"] < 5, latencies
    skips = by(await panel("Skipped by reason"), "vendor", "reason")
    close(sum(v for (vendor, _), v in skips.items() if vendor == "gamma") * w, valid, "gamma")
    assert all(v >= 1 for v in by(await panel("Concurrency limit"), "vendor").values())
    for title in ("In flight", "Paused replicas", "Circuit breaker", "Shared rate limit fallback"):
        assert set(by(await panel(title), "vendor").values()) == {0}, title
    # Dead letters
    letters = by(await panel("Dead letters by vendor and reason"), "vendor", "reason")
    in_range = by(await panel("Dead letters in range by vendor and reason"), "vendor", "reason")
    for vendor in ("alpha", "beta", "gamma"):
        want_rejected = REFUSED_A if vendor == "alpha" else 0
        close(letters[vendor, "rejected"] * w, want_rejected, f"{vendor} rejected letters")
        close(in_range[vendor, "rejected"], want_rejected, f"{vendor} rejected in range")
        close(letters[vendor, "invalid_event"] * w, invalid, f"{vendor} invalid letters")
        close(in_range[vendor, "invalid_event"], invalid, f"{vendor} invalid in range")
    reasons = by(await panel("Invalid events by reason"), "reason")
    close(sum(reasons.values()) * w, invalid, "invalid records by reason (each once)")
    decoded = by(await panel("Decoded vs invalid events", "A"), "vendor")
    invalids = by(await panel("Decoded vs invalid events", "B"), "vendor")
    for vendor in ("alpha", "beta", "gamma"):
        close(decoded[vendor] * w, valid, f"{vendor} decoded")
        close(invalids[vendor] * w, invalid, f"{vendor} invalid")
    assert set(by(await panel("DLQ write failures"), "vendor").values()) == {0}
    # Kafka
    assert all(v > 0 for v in by(await panel("Offset commits"), "vendor").values())
    assert set(by(await panel("Commit failures"), "vendor").values()) == {0}
    assert set(by(await panel("Assigned partitions"), "vendor").values()) == {4}
    assert set(by(await panel("Lag by partition"), "vendor", "partition").values()) == {0}
    [(metric, per_topic)] = await panel("Events consumed by topic")
    close(per_topic * w, records, f"records of topic {metric['topic']} (each once)")
    # One vendor selected: only its series.
    close(
        await single("Delivered /s", vendor="beta") * w, delivered["beta"], "beta alone delivered"
    )


async def check_install_b_and_its_processes(t: dict[str, Any]) -> None:
    """Install B's panels show only B's traffic, and its two workers and supervisor each report
    CPU, memory (under the 150 MiB budget) and descriptors; its GC counts add up over workers."""
    prom: Prometheus = t["prometheus"]
    w = t["window_s"]

    async def panel(title: str, namespace: str, ref: str = "A") -> list[Any]:
        expr = as_grafana_sends(PANELS[title][ref], w, namespace=namespace)
        return await prom.query(expr, t["at_s"].get(namespace, max(t["at_s"].values())))

    [(_, delivered_b)] = await panel("Delivered /s", "ns-b")
    close(delivered_b * w, len(t["delta"].accepted), "install B delivered")
    [(_, consumed_b)] = await panel("Events consumed /s", "ns-b")
    close(consumed_b * w, t["valid_b"], "install B records")
    [(_, replicas)] = await panel("Replicas up", ".*")
    assert replicas == 2
    vendors = {m["vendor"] for m, _ in await panel("Deliveries by outcome", "ns-b")}
    assert vendors == {"delta"}

    memory = {
        m.get(WORKER_LABEL, ""): v for m, v in await panel("Memory (RSS) per process", "ns-b")
    }
    assert set(memory) == {"supervisor", "0", "1"}
    assert all(10 * MIB < rss < 150 * MIB for rss in memory.values()), memory
    cpu = {m.get(WORKER_LABEL, ""): v for m, v in await panel("CPU per process", "ns-b")}
    assert set(cpu) == {"supervisor", "0", "1"} and all(v >= 0 for v in cpu.values())
    assert cpu["0"] + cpu["1"] > 0
    fds = {m.get(WORKER_LABEL, ""): v for m, v in await panel("Open file descriptors", "ns-b")}
    assert all(v >= 5 for v in fds.values()), fds
    collections = await panel("Garbage collections per second", "ns-b")
    assert {m["generation"] for m, _ in collections} == {"0", "1", "2"}
    assert sum(v for _, v in collections) > 0

    [(metric, rss_a)] = await panel("Memory (RSS) per process", "ns-a")
    assert WORKER_LABEL not in metric  # one process, no worker label
    status = await asyncio.to_thread(Path("/proc/self/status").read_text)
    own_rss = int(re.search(r"VmRSS:\s+(\d+) kB", status)[1])
    assert math.isclose(rss_a, own_rss * 1024, rel_tol=0.2)


async def check_rules(t: dict[str, Any]) -> None:
    """Loaded by Prometheus as they ship: 12 refusals make alpha's dead letters pending, and
    nothing else is pending or firing: not the 2 % malformed records, not gamma (all skipped),
    not the up-based rules under a job named otherwise."""
    prom: Prometheus = t["prometheus"]
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{prom.url}/api/v1/rules") as resp,
    ):
        groups = (await resp.json())["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    shipped = yaml.safe_load(ALERTS.read_text())["groups"]
    assert len(rules) == sum(len(g["rules"]) for g in shipped)
    assert all(rule["health"] == "ok" for rule in rules), rules
    alerts = await prom.query("ALERTS")
    held = {(m["alertname"], m.get("vendor"), m.get("reason"), m["alertstate"]) for m, _ in alerts}
    assert held == {("ConversionRelayDeadLetters", "alpha", "rejected", "pending")}


async def test_the_dev_modes_own_traffic_holds_no_alert(broker, topics, prometheus_factory):
    """The demo (`conversion-relay dev`: its config, its strict sandboxes, its traffic with one
    record in 97 malformed and vendors that skip the goals they do not map), scraped for 40 s:
    no rule's expression is ever true, so nothing is pending or could fire."""
    from importlib import resources

    from service.app import Relay
    from service.config import parse_config
    from service.devtools.dev import _traffic
    from service.sandbox.base import Sandbox
    from service.sandbox.registry import contract_for
    from service.vendors import protocol_tag

    raw = yaml.safe_load(
        resources.files("service.devtools").joinpath("dev_config.yaml").read_text()
    )
    raw["kafka"]["topics"] = [topics.source]
    # The demo's Avro stream needs dev mode's stand-in registry; this drill is about the rules.
    raw.pop("inputs", None)
    raw.pop("schema_registry", None)
    raw["kafka"]["group_prefix"] = f"dev-{topics.source}"
    raw["dlq"]["topic"] = topics.dlq
    ports = {name: free_port() for name in raw["vendors"]}
    env = {"KAFKA_BOOTSTRAP": broker.bootstrap, "HTTP_PORT": str(free_port())}
    env |= {f"SANDBOX_{n.upper()}_URL": f"http://127.0.0.1:{p}" for n, p in ports.items()}
    config = parse_config(raw, env)
    sandboxes = [
        Sandbox(contract_for(protocol_tag(vendor), vendor), port=ports[name])
        for name, vendor in config.vendors.items()
    ]
    for sandbox in sandboxes:
        await sandbox.start()
    relay = Relay(config)
    relay_task = asyncio.create_task(relay.run(install_signals=False))
    stop = asyncio.Event()
    traffic: asyncio.Task[None] | None = None
    try:
        await wait_for(lambda: not relay.not_ready_reasons(), 60, "the dev relay ready")
        server = prometheus_factory({"dev": config.http.port})
        server.start()
        await server.wait_ready()
        deadline = time.monotonic() + 30
        while not await server.query("conversion_relay_build_info"):  # scraped at least once
            assert time.monotonic() < deadline, server.logs()
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)  # the rules have been evaluated on the scraped relay since
        watched_from_s = time.time()
        burst: asyncio.Queue[int] = asyncio.Queue()  # no chaos bursts: normal traffic only
        traffic = asyncio.create_task(_traffic(broker.bootstrap, topics.source, 20.0, stop, burst))
        rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
        true_at_some_point: dict[str, list[Any]] = {}
        for _ in range(8):  # every 5 s for 40 s
            await asyncio.sleep(5)
            for rule in rules:
                result = await server.query(rule["expr"])
                if result:
                    true_at_some_point.setdefault(rule["alert"], result)
        assert sum(len(s.accepted) for s in sandboxes) > 500  # the demo did deliver
        invalid = await server.query("max(sum by (vendor) (conversion_relay_events_invalid_total))")
        assert invalid and invalid[0][1] >= 5  # and its malformed records were there
        assert true_at_some_point == {}
        # Before the first scrape ConversionRelayAbsent is rightly pending; from then on, nothing.
        since_s = math.floor(time.time() - watched_from_s)
        assert await server.query(f"count_over_time(ALERTS[{since_s}s])") == []
    finally:
        stop.set()
        if traffic is not None:
            await traffic
        relay.request_stop()
        # Not this test's subject (tests/reliability/test_shutdown.py is): in 1 of 3 full suite
        # runs on 2026-12-06 this stop took over 30 s (cause not found yet; see the issue note).
        await asyncio.wait_for(relay_task, 60)
        for sandbox in sandboxes:
            await sandbox.stop()
