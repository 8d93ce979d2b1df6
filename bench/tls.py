"""TLS in the benchmark: the run's certificates, nginx's TLS settings, and reading its access log.

The `tls` scenario (bench/run.py) runs every transport's client ceiling and the 1-vendor relay
against nginx over plain HTTP and over HTTPS back to back, and times new connections (a full
TLS handshake, a resumed one, none). The certificates are made at the start of each run by
trustme (a throwaway CA and a server certificate for 127.0.0.1); the relay trusts the CA through
`http.ca_bundle`, the client ceilings through `--ca-bundle`. Handshakes are counted from nginx's
access log: one line per request with the connection's serial number and `$ssl_session_reused`.
This module is the pure part (and the certificate files); the scenario is in bench/tls_scenario.py.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# nginx's access-log lines (bench/nginx.conf): over plain HTTP the three TLS fields are "-".
PLAIN_LOG_FORMAT = "$msec $status $connection - - - $uri"
TLS_LOG_FORMAT = (
    "$msec $status $connection $ssl_session_reused $ssl_protocol $ssl_alpn_protocol $uri"
)
# trustme's default key: ECDSA P-256 (the CA's and the server's).
CERTIFICATE_KIND = "ECDSA P-256 server certificate for 127.0.0.1 from a throwaway CA (trustme)"


@dataclass(frozen=True)
class TlsFiles:
    """The run's CA (what clients trust) and nginx's certificate chain and key, as PEM files."""

    ca_pem: Path
    chain_pem: Path
    key_pem: Path


def make_certificates(directory: Path) -> TlsFiles | None:
    """A throwaway CA and a server certificate for 127.0.0.1 in `directory`; None without
    trustme (the project's dev extra, installed by `make env`)."""
    try:
        import trustme
    except ImportError:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    files = TlsFiles(directory / "ca.pem", directory / "server-chain.pem", directory / "server.key")
    ca.cert_pem.write_to_path(str(files.ca_pem))
    files.chain_pem.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    server.private_key_pem.write_to_path(str(files.key_pem))
    files.key_pem.chmod(0o600)
    return files


def nginx_tls_settings(files: TlsFiles, resumption: bool = True) -> str:
    """The `server` block's TLS directives: TLS 1.2 and 1.3; with `resumption`, a session cache
    and tickets (what a vendor's front end usually offers), without, every handshake is full."""
    lines = [
        f"ssl_certificate {files.chain_pem};",
        f"ssl_certificate_key {files.key_pem};",
        "ssl_protocols TLSv1.2 TLSv1.3;",
    ]
    if resumption:
        lines += [
            "ssl_session_cache shared:bench:10m;",
            "ssl_session_timeout 1h;",
            "ssl_session_tickets on;",
        ]
    else:
        lines += ["ssl_session_cache off;", "ssl_session_tickets off;"]
    return "\n".join(f"        {line}" for line in lines)


@dataclass(frozen=True)
class AccessLine:
    """One request in nginx's access log."""

    at_s: float
    status: str
    connection: int  # nginx's connection serial number: one per TCP connection
    resumed: bool | None  # its TLS session was resumed; None over plain HTTP
    protocol: str | None  # TLSv1.3, ...; None over plain HTTP
    alpn: str | None  # the protocol ALPN chose ("http/1.1"), None when the client offered none
    uri: str


def _field(value: str) -> str | None:
    """An access-log field: nginx writes "-" for an empty variable."""
    return None if value in ("-", "") else value


def parse_access_line(line: str) -> AccessLine:
    """One line of either log format (the URI, last, may hold spaces)."""
    at, status, connection, reused, protocol, alpn, uri = line.split(" ", 6)
    tls_protocol = _field(protocol)
    return AccessLine(
        float(at),
        status,
        int(connection),
        None if tls_protocol is None else reused == "r",
        tls_protocol,
        _field(alpn),
        uri,
    )


@dataclass
class Handshakes:
    """The connections that carried requests, by nginx's log: how many, how many resumed."""

    resumed_by_connection: dict[int, bool | None] = field(default_factory=dict)
    protocols: Counter[str] = field(default_factory=Counter)  # per connection
    alpn: Counter[str] = field(default_factory=Counter)  # per connection; "none" without ALPN

    def add(self, line: AccessLine) -> None:
        """Count the line's connection once, at its first request."""
        if line.connection in self.resumed_by_connection:
            return
        self.resumed_by_connection[line.connection] = line.resumed
        if line.protocol is not None:
            self.protocols[line.protocol] += 1
            self.alpn[line.alpn or "none"] += 1

    @property
    def connections(self) -> int:
        """Connections that carried at least one request."""
        return len(self.resumed_by_connection)

    @property
    def resumed(self) -> int:
        """Of those, TLS connections whose session was resumed (an abbreviated handshake)."""
        return sum(1 for resumed in self.resumed_by_connection.values() if resumed)

    @property
    def full(self) -> int:
        """TLS connections with a full handshake."""
        return sum(1 for resumed in self.resumed_by_connection.values() if resumed is False)

    def describe(self) -> str:
        """E.g. "64 (0 resumed)" over TLS, "64" over plain HTTP."""
        if not self.protocols:
            return f"{self.connections:,}"
        return f"{self.connections:,} ({self.resumed:,} resumed)"

    def tls_summary(self) -> str:
        """E.g. "TLSv1.3, ALPN http/1.1" (every kind seen, with counts when mixed)."""

        def kinds(counter: Counter[str]) -> str:
            if len(counter) == 1:
                return next(iter(counter))
            return ", ".join(f"{k} ×{v}" for k, v in counter.most_common())

        if not self.protocols:
            return ""
        return f"{kinds(self.protocols)}, ALPN {kinds(self.alpn)}"


@dataclass(frozen=True)
class TlsCost:
    """The same contender over plain HTTP and over HTTPS, in the same run."""

    plain_per_s: float
    tls_per_s: float
    plain_cpu_us: float | None = None  # the contender's CPU per delivery
    tls_cpu_us: float | None = None

    @property
    def ratio(self) -> float:
        """HTTPS deliveries/s over plain's."""
        return self.tls_per_s / self.plain_per_s

    @property
    def plain_us(self) -> float:
        """Wall µs per delivery over plain HTTP (1 / rate, at the run's concurrency)."""
        return 1e6 / self.plain_per_s

    @property
    def tls_us(self) -> float:
        """Wall µs per delivery over HTTPS."""
        return 1e6 / self.tls_per_s

    @property
    def added_us(self) -> float:
        """What TLS adds per delivery, in wall µs (the issue's "TLS adds ≤ 10 µs")."""
        return self.tls_us - self.plain_us

    @property
    def added_cpu_us(self) -> float | None:
        """What TLS adds to the contender's CPU per delivery."""
        if self.plain_cpu_us is None or self.tls_cpu_us is None:
            return None
        return self.tls_cpu_us - self.plain_cpu_us


def tls_cost(
    plain_per_s: float | None,
    tls_per_s: float | None,
    plain_cpu_us: float | None = None,
    tls_cpu_us: float | None = None,
) -> TlsCost | None:
    """The comparison, or None when either side has no rate."""
    if not plain_per_s or not tls_per_s:
        return None
    return TlsCost(plain_per_s, tls_per_s, plain_cpu_us, tls_cpu_us)


MIN_RATIO = 0.9  # issue 22: the default transport's relay over HTTPS ≥ 0.9× its plain rate
MAX_ADDED_US = 10.0  # and TLS adds at most 10 µs per delivery


def target_verdict(cost: TlsCost | None) -> str:
    """The issue's targets for the default transport's relay, met or not, with the figures."""
    if cost is None:
        return "targets not measured (a run has no rate)"
    ratio_ok = cost.ratio >= MIN_RATIO
    added_ok = cost.added_us <= MAX_ADDED_US
    return (
        f"HTTPS / plain {cost.ratio:.2f}× (target ≥ {MIN_RATIO:.2f}×: "
        f"{'met' if ratio_ok else 'NOT met'}); TLS adds {cost.added_us:+.1f} µs per delivery "
        f"(target ≤ {MAX_ADDED_US:.0f} µs: {'met' if added_ok else 'NOT met'})"
    )
