"""The HL7 port's gate in-process: allow-list, connection limits, TLS with client certificates, and
an oversize frame answered AR with the connection closed."""
from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from config.schema import Hl7Listen, Hl7ListenTLS
from conftest import free_port
from daemon.hl7 import acks
from daemon.hl7.framing import frame
from daemon.hl7.listener import CONNECTION_LIMIT, HOST_NOT_ALLOWED, PER_HOST_LIMIT, Hl7Listener
from daemon.ops.listening import host_allowed

MSG = b"MSH|^~\\&|RIS|H|CXRD|CXRD|2026||ORU^R01|C1|P|2.5.1\rOBR|1"


class Intake:
    def __init__(self) -> None:
        self.refused: list[tuple[str, str]] = []
        self.messages: list[bytes] = []

    def handle(self, raw: bytes, host: str) -> bytes:
        self.messages.append(raw)
        return acks.build_ack(acks.read_header(raw), acks.AA, "ok", acks.ACCEPTED, application="CXRD", facility="")

    def too_large(self, head: bytes, host: str, limit: int) -> bytes:
        return acks.build_ack(acks.read_header(head), acks.AR, "too large", acks.DATA_TYPE,
                              application="CXRD", facility="")

    def refused_connection(self, host: str, reason: str) -> None:
        self.refused.append((host, reason))


@pytest.fixture
def listen():  # noqa: ANN201
    started: list[Hl7Listener] = []

    def make(**kw) -> tuple[Hl7Listener, Intake]:  # noqa: ANN003
        intake = Intake()
        cfg = Hl7Listen(enabled=True, bind="127.0.0.1", port=free_port(), **kw)
        listener = Hl7Listener(cfg, intake)
        listener.start()
        started.append(listener)
        return listener, intake
    yield make
    for listener in started:
        listener.stop(drain_s=1)


def send(port: int, data: bytes, *, wrap=None) -> bytes:  # noqa: ANN001
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s = wrap(s) if wrap else s
        s.sendall(data)
        out = b""
        while not out.endswith(b"\x1c\r"):
            try:
                chunk = s.recv(4096)
            except ConnectionResetError:  # closed with our bytes unread: refused all the same
                break
            if not chunk:
                break
            out += chunk
        return out


def wait(predicate, timeout: float = 5.0) -> bool:  # noqa: ANN001
    """True as soon as `predicate()` is (called once per try: it may have side effects)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def test_host_allowed_matches_networks_and_ipv4_mapped_addresses():
    from daemon.ops.listening import parse_networks
    nets = parse_networks(["10.1.0.0/16", "::1"])
    assert host_allowed("10.1.2.3", nets) and host_allowed("::ffff:10.1.2.3", nets) and host_allowed("::1", nets)
    assert not host_allowed("10.2.0.1", nets) and not host_allowed("not an address", nets)


def test_messages_are_acknowledged_one_by_one_on_a_connection(listen):
    listener, intake = listen()
    out = send(listener.port, frame(MSG) + frame(MSG.replace(b"C1", b"C2")))
    assert out.count(b"MSA|AA|C1") == 1
    assert wait(lambda: len(intake.messages) == 2)


def test_a_host_not_on_the_list_is_closed_before_anything_is_read(listen):
    listener, intake = listen(allowed_hosts=["10.9.9.9"])
    assert send(listener.port, frame(MSG)) == b""
    assert intake.messages == [] and wait(lambda: intake.refused == [("127.0.0.1", HOST_NOT_ALLOWED)])


def test_connection_limits_total_and_per_host(listen):
    listener, intake = listen(max_connections_per_host=1)
    with socket.create_connection(("127.0.0.1", listener.port)) as first:
        time.sleep(0.2)
        assert send(listener.port, frame(MSG)) == b""
        assert wait(lambda: ("127.0.0.1", PER_HOST_LIMIT) in intake.refused)
        first.sendall(frame(MSG))
        assert b"MSA|AA" in first.recv(4096)  # the first connection is served as before
    listener, intake = listen(max_connections=1, max_connections_per_host=0)
    with socket.create_connection(("127.0.0.1", listener.port)):
        time.sleep(0.2)
        assert send(listener.port, frame(MSG)) == b""
        assert wait(lambda: ("127.0.0.1", CONNECTION_LIMIT) in intake.refused)
    assert wait(lambda: send(listener.port, frame(MSG)) != b"")  # the slot is free again


def test_an_oversize_frame_gets_ar_then_the_connection_closes(listen):
    listener, intake = listen(max_message_bytes=4096)
    with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as s:
        s.sendall(b"\x0b" + MSG + b"\r")
        sender = threading.Thread(target=lambda: _try_send(s, b"x" * (8 << 20)), daemon=True)
        sender.start()
        out = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            out += chunk
    assert b"MSA|AR|C1" in out and intake.messages == []


def _try_send(s: socket.socket, data: bytes) -> None:
    try:
        s.sendall(data)
    except OSError:
        pass


def _pki(d):  # noqa: ANN001, ANN202
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hl7 test CA")])

    def issue(cn: str, key, ca: bool = False):  # noqa: ANN001, ANN202
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
             .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        return b.sign(ca_key, hashes.SHA256())
    paths = {"ca": d / "ca.pem"}
    paths["ca"].write_bytes(issue("hl7 test CA", ca_key, ca=True).public_bytes(serialization.Encoding.PEM))
    for who in ("server", "ris"):
        key = ec.generate_private_key(ec.SECP256R1())
        paths[who], paths[who + "_key"] = d / f"{who}.pem", d / f"{who}.key"
        paths[who].write_bytes(issue(who, key).public_bytes(serialization.Encoding.PEM))
        paths[who + "_key"].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    return paths


def test_tls_with_required_client_certificates(listen, tmp_path):
    pki = _pki(tmp_path)
    tls = Hl7ListenTLS(enabled=True, cert=str(pki["server"]), key=str(pki["server_key"]), ca=str(pki["ca"]),
                       require_client_cert=True)
    listener, intake = listen(tls=tls)
    ctx = ssl.create_default_context(cafile=str(pki["ca"]))
    ctx.check_hostname = False
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):  # no client certificate: refused
        send(listener.port, frame(MSG), wrap=lambda s: ctx.wrap_socket(s, server_hostname="localhost"))
    ctx.load_cert_chain(str(pki["ris"]), str(pki["ris_key"]))
    out = send(listener.port, frame(MSG), wrap=lambda s: ctx.wrap_socket(s, server_hostname="localhost"))
    assert b"MSA|AA|C1" in out
    assert send(listener.port, frame(MSG)) == b""  # plain MLLP on a TLS port: the handshake fails, closed


def test_stop_does_not_wait_for_a_persistent_idle_connection(listen):
    listener, intake = listen()
    with socket.create_connection(("127.0.0.1", listener.port), timeout=5) as s:
        s.sendall(frame(MSG))
        assert b"MSA|AA" in s.recv(4096)  # the RIS keeps its connection open for the next report
        t0 = time.monotonic()
        listener.stop(drain_s=20)
        assert time.monotonic() - t0 < 3
        assert s.recv(4096) == b""  # closed
