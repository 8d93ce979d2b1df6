"""A raw-socket scripted HTTP/1.1 server for wire tests: each request (by connection and request
number) is answered with exact bytes, over plain TCP or TLS, from a thread of its own.

Blocking sockets in threads, not asyncio: the server's bytes, pauses and closes (with or without
TLS close_notify) are exactly what the script says, and they do not depend on the loop of the
client under test. Also here: certificates (trustme), and a port whose SYNs go unanswered.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = [
    "OK",
    "Pki",
    "Reply",
    "WireServer",
    "blackhole_port",
    "make_pki",
    "read_request",
]

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
# How long a connection thread waits for a request (or the test's end) before giving up.
_IDLE_S = 10.0


@dataclass(frozen=True)
class Reply:
    """What the server does with one request."""

    data: bytes = b""
    close: bool = False  # close the connection after writing `data` (or instead of answering)
    close_notify: bool = True  # on TLS: end with close_notify (False: a bare TCP close)
    hang: bool = False  # never answer (until the server stops)
    drip: tuple[tuple[bytes, float], ...] = ()  # after `data`: (bytes, pause before them)...


@dataclass(frozen=True)
class Pki:
    """A CA the client may trust, and certificates for a server on 127.0.0.1 / localhost."""

    ca_path: Path  # the CA's PEM (a ca_bundle)
    good: ssl.SSLContext  # a leaf for 127.0.0.1, localhost and vendor.test, signed by the CA
    expired: ssl.SSLContext  # the same names, expired yesterday
    wrong_name: ssl.SSLContext  # signed by the CA, for another name only
    self_signed: ssl.SSLContext  # for the right names, signed by itself
    idn: ssl.SSLContext  # for xn--bcher-kva.test (bücher.test), signed by the CA
    ca: trustme.CA = field(repr=False)

    def client_context(self) -> ssl.SSLContext:
        """A client context trusting only this CA."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


def _server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    context.set_alpn_protocols(["http/1.1"])
    return context


def _self_signed(*names: str) -> ssl.SSLContext:
    """A server context presenting a leaf signed by its own key (no CA vouches for it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    blob = trustme.Blob(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with blob.tempfile() as path:
        context.load_cert_chain(path)
    return context


def make_pki(directory: Path) -> Pki:
    """A fresh CA (written to `directory`) and the server contexts of every TLS case."""
    ca = trustme.CA()
    ca_path = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    names = ("127.0.0.1", "localhost", "vendor.test")
    yesterday = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    return Pki(
        ca_path=ca_path,
        good=_server_context(ca.issue_cert(*names)),
        expired=_server_context(
            ca.issue_cert(*names, not_before=yesterday - dt.timedelta(days=30), not_after=yesterday)
        ),
        wrong_name=_server_context(ca.issue_cert("vendor.invalid")),
        self_signed=_self_signed(*names),
        idn=_server_context(ca.issue_cert("xn--bcher-kva.test", "127.0.0.1")),
        ca=ca,
    )


def read_request(sock: socket.socket, buffer: bytearray) -> bytes | None:
    """One request (head and Content-Length or chunked body) from `sock`, or None at EOF."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buffer += chunk
    end = buffer.index(b"\r\n\r\n") + 4
    head = bytes(buffer[:end])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(buffer) < end + length:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buffer += chunk
    request = bytes(buffer[: end + length])
    del buffer[: end + length]
    return request


Script = Callable[[int, int], Reply]


class WireServer:
    """A loopback server answering each request with scripted bytes; it counts connections and
    keeps every request it read (in arrival order)."""

    def __init__(
        self,
        script: Script,
        *,
        tls: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.script = script
        self.tls = tls
        self.connections = 0
        self.requests: list[bytes] = []
        self.tls_resumed: list[bool] = []  # per TLS connection: was its session resumed
        self.alpn: list[str | None] = []  # per TLS connection: the protocol ALPN chose
        self._listener = socket.create_server((host, port))
        self.host = host
        self.port = self._listener.getsockname()[1]
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def __enter__(self) -> WireServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL (https when the server speaks TLS)."""
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def bodies(self) -> list[bytes]:
        """The body of every request read."""
        return [request.partition(b"\r\n\r\n")[2] for request in self.requests]

    def stop(self) -> None:
        """Close the listener and every connection; wait for the threads."""
        self._stopped.set()
        with suppress(OSError):  # wake accept()
            socket.create_connection((self.host, self.port), timeout=1).close()
        self._listener.close()
        with self._lock:
            socks = list(self._socks)
        for sock in socks:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._accepting.join(2)
        for thread in self._threads:
            thread.join(2)

    def close_connections(self) -> None:
        """Close every open connection now (a server's idle sweep), with a FIN."""
        with self._lock:
            socks, self._socks = list(self._socks), []
        for sock in socks:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            if self._stopped.is_set():
                sock.close()
                return
            with self._lock:
                conn_no = self.connections
                self.connections += 1
            thread = threading.Thread(target=self._serve, args=(sock, conn_no), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, raw: socket.socket, conn_no: int) -> None:
        raw.settimeout(_IDLE_S)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock: socket.socket = raw
        with self._lock:
            self._socks.append(raw)
        try:
            if self.tls is not None:
                tls_sock = self.tls.wrap_socket(raw, server_side=True)  # takes raw's descriptor
                with self._lock:
                    self._socks.append(tls_sock)
                self.tls_resumed.append(tls_sock.session_reused)
                self.alpn.append(tls_sock.selected_alpn_protocol())
                sock = tls_sock
            buffer = bytearray()
            for req_no in range(1_000_000):
                request = read_request(sock, buffer)
                if request is None:
                    return
                self.requests.append(request)
                reply = self.script(conn_no, req_no)
                if reply.hang:
                    self._stopped.wait(_IDLE_S)
                    return
                if reply.data:
                    sock.sendall(reply.data)
                for data, pause_s in reply.drip:
                    time.sleep(pause_s)
                    sock.sendall(data)
                if reply.close:
                    if isinstance(sock, ssl.SSLSocket) and reply.close_notify:
                        with suppress(OSError, ValueError):
                            sock.unwrap()
                    return
        except (OSError, ssl.SSLError):
            return
        finally:
            sock.close()
            raw.close()


@contextmanager
def wire_server(script: Script, **options: object) -> Iterator[WireServer]:
    """A started WireServer, stopped on exit."""
    server = WireServer(script, **options)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def blackhole_port(host: str = "127.0.0.1") -> Iterator[int]:
    """A port on `host` whose listen queue is full: a new connection's SYN goes unanswered."""
    listener = socket.socket()
    listener.bind((host, 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        for _ in range(16):
            filler = socket.socket()
            filler.settimeout(0.2)
            try:
                filler.connect((host, port))
            except TimeoutError:
                filler.close()
                yield port
                return
            fillers.append(filler)
        raise RuntimeError("this kernel accepts connections beyond a full listen queue")
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
