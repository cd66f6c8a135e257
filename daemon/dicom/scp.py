"""The DICOM Storage SCP: it only speaks DICOM.

It turns network events into calls with plain values (an `on_store` callable returning a status, an
`on_reject` callable for the audit) and applies the association gate from settings: called AE title,
calling AE and host allow-lists, association limits (overall and per host), timeouts, optional TLS,
and the bounds that hold before a peer is trusted: the size of a PDU (`daemon.dicom.pdu_limits`)
and how long a connection may hold a slot before asking for an association
(`daemon.dicom.preassociation`). Which outcome gets which
DICOM status is decided in `daemon.dicom.statuses`; which outcome an image has, in
`daemon.stages.ingest`. It installs no adjustments to pynetdicom (`daemon.dicom.patches`, installed by
the service), so it serves on stock pynetdicom as well.
"""
from __future__ import annotations

import copy
import ipaddress
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import AllTransferSyntaxes, UID
from pynetdicom import AE, _config as pynetdicom_config, evt
from pynetdicom.association import Association
from pynetdicom.presentation import AllStoragePresentationContexts, PresentationContext
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from config.schema import Dicom
from daemon.dicom import dataset_limits, gate_rules, statuses, tls_identity
from daemon.dicom.preassociation import ConnectionGuard
from daemon.ops.listening import host_allowed, parse_networks, server_tls_context
from daemon.ops.logs import event

log = logging.getLogger("cxrd.scp")

# on_store(dataset, file_meta, calling_aet, peer_host) -> DICOM status
StoreFn = Callable[[Dataset, Dataset, str, str], int]
# on_reject(calling_aet, peer_host, reason, called_aet): reason names the gate rules (`gate_rules`)
RejectFn = Callable[[str, str, str, str], None]
# on_accept(calling_aet, peer_host)
AcceptFn = Callable[[str, str], None]


def decodable_transfer_syntaxes() -> list[str]:
    """Transfer syntaxes whose pixel data an installed decoder can read; only these are negotiated,
    so a PACS never gets 0x0000 for an image the worker cannot open."""
    usable = []
    for uid in AllTransferSyntaxes:
        try:
            if get_decoder(uid).is_available:
                usable.append(uid)
        except NotImplementedError:
            continue
    # Preferred order for SCP negotiation: lossless/native first.
    return sorted(usable, key=lambda u: (UID(u).is_compressed, u))


@dataclass
class ScpHandle:
    server: ThreadedAssociationServer
    ae: AE
    guard: ConnectionGuard

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def active_associations(self) -> int:
        return len(self.server.active_associations)

    def stop(self, drain_s: float = 30.0) -> None:
        """Stop accepting, let in-flight associations finish for up to drain_s, then abort the rest."""
        self.server.shutdown()  # stops the accept loop and closes the listening socket
        self.guard.stop()
        deadline = time.monotonic() + drain_s
        # Only associations that got past negotiation may be mid-transfer; idle or half-open
        # connections are not worth delaying a stop for.
        while (any(a.is_established for a in self.server.active_associations)
               and time.monotonic() < deadline):
            time.sleep(0.05)
        for assoc in list(self.server.active_associations):
            assoc.abort()


class _Contexts(list):
    """The server's supported presentation contexts, cheap to copy per association.

    pynetdicom deep-copies them for every association it accepts: every storage class times every
    decodable transfer syntax, object by object, holding the GIL (so every other association
    waits), and many senders open one association per image. A context's only mutable part is
    its transfer-syntax list (UIDs are immutable strings, the rest scalars), so a shallow copy
    with a fresh list is an equal, independent copy."""

    def __deepcopy__(self, memo: dict) -> list[PresentationContext]:
        out = []
        for cx in self:
            dup = copy.copy(cx)
            dup._transfer_syntax = list(cx._transfer_syntax)
            out.append(dup)
        return out


class _GatedServer(ThreadedAssociationServer):
    """pynetdicom's server plus: the source-host allow-list before any DICOM byte is read, a socket
    timeout on every accepted connection (pynetdicom reads a PDU body with blocking recv calls, so a
    peer that sends half a PDU would otherwise hold its thread forever), TLS handshakes moved off the
    accept loop, and errors logged in our format instead of printed."""

    allowed_networks: list[ipaddress._BaseNetwork] = []
    on_reject: RejectFn | None = None
    # The listen backlog (socketserver's default is 5). A host that connects in a loop fills a short
    # backlog faster than the accept loop refuses it, and the kernel then drops everyone's SYNs,
    # the PACS's included, which each cost a one-second retransmit.
    request_queue_size = 1024

    def get_request(self):  # noqa: ANN201 - socketserver API
        client, address = self.socket.accept()
        client.settimeout(self.ae.network_timeout)
        if self.ssl_context:
            # The handshake happens on first read, in the association's own thread.
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address

    def handle_error(self, request, client_address) -> None:  # noqa: ANN001
        import sys
        exc = sys.exc_info()[1]
        event(log, "connection.error", logging.WARNING,
              host=client_address[0] if isinstance(client_address, tuple) else "",
              error=type(exc).__name__ if exc else "unknown")

    def verify_request(self, request, client_address) -> bool:  # noqa: ANN001 - socketserver API
        host = client_address[0] if isinstance(client_address, tuple) else str(client_address)
        if host_allowed(host, self.allowed_networks):
            return True
        if self.on_reject:
            self.on_reject("", host, gate_rules.HOST_NOT_ALLOWED, "")
        return False


_DECODE_LOG = logging.getLogger("pynetdicom.utils")
_DIMSE_LOG = logging.getLogger("pynetdicom.dimse")


class _NonAsciiTextNoise(logging.Filter):
    """Drops pynetdicom's error-with-traceback for each codec it tries on a non-ASCII AE title or
    UID in a received PDU. Any peer can send such bytes, so they must not fill the log with
    tracebacks; pynetdicom then decodes the text with a fallback codec, or the PDU is refused as
    undecodable, which the PDU reader logs in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], UnicodeError))


def start(cfg: Dicom, on_store: StoreFn | None, on_reject: RejectFn | None = None,
          on_accept: AcceptFn | None = None) -> ScpHandle:
    """Bind the port and serve in background threads; raises OSError if the port cannot be bound.

    Without `on_store` only Verification (C-ECHO) is offered."""
    # pynetdicom's "standard" handlers turn every PDU and DIMSE message into info/debug lines, which
    # daemon/ops/logs.py drops (pynetdicom stays at WARNING: its details quote UIDs), at a cost per
    # image. cxrd logs and audits associations and stores itself. A process-wide pynetdicom setting,
    # read when an association is created: it must be set before the server accepts any.
    pynetdicom_config.LOG_HANDLER_LEVEL = "none"
    if not any(isinstance(f, _NonAsciiTextNoise) for f in _DECODE_LOG.filters):
        _DECODE_LOG.addFilter(_NonAsciiTextNoise())
    if not any(isinstance(f, dataset_limits.InvalidMessageNoise) for f in _DIMSE_LOG.filters):
        _DIMSE_LOG.addFilter(dataset_limits.InvalidMessageNoise())
    on_reject = on_reject or log_refusal
    ae = application_entity(cfg, storage=on_store is not None)
    server = ae.make_server((cfg.bind, cfg.port), ssl_context=server_tls_context(cfg.tls) if cfg.tls.enabled else None,
                            evt_handlers=event_handlers(on_store, on_reject, on_accept, cfg.max_dataset_bytes),
                            server_class=_GatedServer)
    server.contexts = _Contexts(server.contexts)
    server.allowed_networks = parse_networks(cfg.allowed_hosts)
    server.on_reject = on_reject
    guard = ConnectionGuard(cfg.preassociation_timeout, cfg.max_associations_per_host, on_reject)
    for ev, handler in guard.handlers():
        server.bind(ev, handler)
    server.bind(evt.EVT_CONN_OPEN, dataset_limits.opened, [cfg.max_dataset_bytes])
    if cfg.tls.enabled and cfg.tls.client_certificates:  # bound last: a refusal ends the association
        server.bind(evt.EVT_REQUESTED, tls_identity.requested_handler(
            tls_identity.parse_rules(cfg.tls.client_certificates), on_reject))
    guard.start()
    thread = threading.Thread(target=server.serve_forever, name="cxrd-scp", daemon=True)
    thread.start()
    ae._servers.append(server)  # so that ae.shutdown() stops it, as for pynetdicom's start_server
    return ScpHandle(server=server, ae=ae, guard=guard)


def application_entity(cfg: Dicom, storage: bool) -> AE:
    """Our AE with the association gate's settings and the contexts we accept: Verification, and
    every storage class in the transfer syntaxes we can decode when `storage` is set."""
    ae = AE(ae_title=cfg.ae_title)
    ae.require_called_aet = True
    ae.require_calling_aet = list(cfg.allowed_calling_aets)
    ae.maximum_associations = cfg.max_associations
    ae.maximum_pdu_size = cfg.max_pdu
    ae.acse_timeout = cfg.acse_timeout
    ae.dimse_timeout = cfg.dimse_timeout
    ae.network_timeout = cfg.network_timeout
    ae.add_supported_context(Verification)
    if storage:
        syntaxes = decodable_transfer_syntaxes()
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, syntaxes)
    return ae


def event_handlers(on_store: StoreFn | None, on_reject: RejectFn | None,
                   on_accept: AcceptFn | None, max_dataset_bytes: int) -> list[tuple]:
    """pynetdicom's (event, handler, args) bindings: one small handler per event."""
    handlers: list[tuple] = [(evt.EVT_C_ECHO, handle_echo), (evt.EVT_REJECTED, handle_rejected, [on_reject]),
                             (evt.EVT_ACCEPTED, handle_accepted, [on_accept]),
                             (evt.EVT_CONN_CLOSE, handle_closed)]
    if on_store is not None:
        handlers.append((evt.EVT_C_STORE, handle_store, [on_store, on_reject, max_dataset_bytes]))
    return handlers


def handle_echo(_event: evt.Event) -> int:
    return statuses.SUCCESS


def handle_store(ev: evt.Event, on_store: StoreFn, on_reject: RejectFn | None,
                 max_dataset_bytes: int) -> int:
    """Decode the dataset and hand it on; an undecodable one is refused here, never crashing the
    association (pynetdicom decodes lazily, on first access). A deflated one is inflated within
    `max_dataset_bytes` (`dataset_limits`)."""
    requestor = ev.assoc.requestor
    try:
        ds = dataset_limits.received_dataset(ev, max_dataset_bytes)
        meta = ev.file_meta
    except dataset_limits.DatasetTooLarge:
        if on_reject:
            on_reject(requestor.ae_title, requestor.address, gate_rules.DATASET_TOO_LARGE,
                      gate_rules.called_ae_title(ev.assoc))
        status = statuses.REFUSED_SIZE.status
    except Exception as exc:
        if on_reject:
            on_reject(requestor.ae_title, requestor.address,
                      f"{gate_rules.UNPARSEABLE_DATASET} ({type(exc).__name__})", gate_rules.called_ae_title(ev.assoc))
        status = statuses.UNPARSEABLE.status
    else:
        status = on_store(ds, meta, requestor.ae_title, requestor.address)
    tally = _tally(ev.assoc)
    if tally is not None:
        tally.count(status, _dataset_bytes(ev))
    return status


def handle_rejected(ev: evt.Event, on_reject: RejectFn | None) -> None:
    """Logged and audited by `on_reject` (once, aggregated): the rules broken and the called AE title."""
    requestor = ev.assoc.requestor
    if on_reject:
        on_reject(requestor.ae_title, requestor.address, gate_rules.rejection_reasons(ev.assoc),
                  gate_rules.called_ae_title(ev.assoc))


def handle_accepted(ev: evt.Event, on_accept: AcceptFn | None) -> None:
    """One info line per accepted association (who, asking for whom, from where: no patient data),
    and its tally, summarised in one more line when it ends."""
    assoc = ev.assoc
    requestor = assoc.requestor
    called = gate_rules.called_ae_title(assoc)
    assoc.cxrd_tally = _AssociationTally(requestor.ae_title, requestor.address)  # type: ignore[attr-defined]
    event(log, "association.accepted", calling_aet=requestor.ae_title, called_aet=called, host=requestor.address)
    if on_accept:
        on_accept(requestor.ae_title, requestor.address)


def handle_closed(ev: evt.Event) -> None:
    """An accepted association's summary, when its connection closes (in the DUL thread, which every
    ending passes through, where EVT_RELEASED may come before or after it)."""
    tally = _tally(ev.assoc)
    if tally is not None:
        tally.summarise(how_it_ended(ev.assoc))


def how_it_ended(assoc: Association) -> str:
    """`released`, or `aborted` (by either side, or the connection lost). The transport closes in
    state Sta13 after our A-RELEASE-RP or our A-ABORT (which sets `is_aborted` before it is sent);
    in any other state it was the peer's A-ABORT or a lost connection."""
    if assoc.is_aborted:
        return "aborted"
    if assoc.is_released or assoc.dul.state_machine.current_state == "Sta13":
        return "released"
    return "aborted"


def log_refusal(calling_aet: str, host: str, reason: str, called_aet: str) -> None:
    """Where no `on_reject` is given (the refusal audit logs in the service): one line per refusal."""
    event(log, "association.refused", logging.WARNING, calling_aet=calling_aet, called_aet=called_aet,
          host=host, reason=reason)


class _AssociationTally:
    """What one accepted association delivered: counted in its thread, summarised once at its end."""

    def __init__(self, calling_aet: str, host: str):
        self.calling_aet, self.host = calling_aet, host
        self.started = time.monotonic()
        self.images = self.acknowledged = self.nbytes = 0
        self._lock = threading.Lock()
        self._summarised = False

    def count(self, status: int, nbytes: int) -> None:
        self.images += 1
        self.acknowledged += status == statuses.SUCCESS
        self.nbytes += nbytes

    def summarise(self, how: str) -> None:
        with self._lock:
            if self._summarised:
                return
            self._summarised = True
        event(log, "association.ended", logging.INFO, calling_aet=self.calling_aet, host=self.host, ended=how,
              images=self.images, acknowledged=self.acknowledged, refused=self.images - self.acknowledged,
              bytes=self.nbytes, seconds=round(time.monotonic() - self.started, 2))


def _tally(assoc: object) -> _AssociationTally | None:
    return getattr(assoc, "cxrd_tally", None)


def _dataset_bytes(ev: evt.Event) -> int:
    """The encoded data set's size as received (0 if pynetdicom holds it some other way)."""
    try:
        return ev.request.DataSet.getbuffer().nbytes
    except (AttributeError, TypeError, ValueError):
        return 0
