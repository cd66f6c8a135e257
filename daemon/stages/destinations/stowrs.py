"""DICOMweb STOW-RS (PS3.18 10.5): POST every object of a report to `{url}/studies` in one request.

Every byte the peer sends back is hostile: the response body is read up to `MAX_RESPONSE` bytes,
the whole request (connect, TLS, upload, answer) must finish within `timeout_s` (`Deadline`: a peer
answering a byte at a time would otherwise pass every per-operation timeout and hold the results
stage), redirects are not followed (a redirected POST would lose its
body or leak the report to another host), and nothing the peer says is quoted in logs or rows except
numbers. Credentials come from a file (`results.stow.credentials_file`) and travel only in the
Authorization header; `describe()` never shows them.

Outcome rules: 200 = every object stored; 202 = stored with warnings unless the response lists
failed objects; a response listing failed objects (Failed SOP Sequence) or any other 4xx is a
refusal (parked at once) except 408 and 429, which like 5xx, timeouts, connection errors and a
response over `MAX_RESPONSE` are retried under `results.max_attempts`.
"""
from __future__ import annotations

import base64
import http.client
import json
import secrets
import socket
import ssl
import threading
import urllib.parse
from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from daemon.dicom import result_objects as report
from daemon.stages.destinations.content import ReportContent
from daemon.stages.destinations.errors import RefusedError, SendError

MAX_RESPONSE = 1 << 20  # a STOW-RS response for a few objects is a few KiB
RETRYABLE_4XX = (408, 429)
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
FAILURE_REASON = "00081197"
REFERENCED_SOP_INSTANCE_UID = "00081155"


@dataclass(frozen=True)
class StowDestination:
    url: str                                # base URL of the DICOMweb service, e.g. https://pacs/dicom-web
    authorization: str = field(default="", repr=False)  # the Authorization header value; never shown
    tls: ssl.SSLContext | None = None
    timeout_s: float = 30.0

    def describe(self) -> str:
        u = urllib.parse.urlsplit(self.url)
        return f"STOW-RS {u.scheme}://{u.hostname}" + (f":{u.port}" if u.port else "") + u.path.rstrip("/")

    def send(self, objects: list[Dataset], content: ReportContent | None = None) -> None:
        post(self, [report.to_bytes(ds) for ds in objects], [str(ds.SOPInstanceUID) for ds in objects])


def authorization(scheme: str, secret: str) -> str:
    """The header value for `results.stow.auth`: basic takes "user:password", bearer a token."""
    if scheme == "basic":
        return "Basic " + base64.b64encode(secret.encode()).decode()
    if scheme == "bearer":
        return "Bearer " + secret
    return ""


def multipart(parts: list[bytes]) -> tuple[bytes, str]:
    """The request body and its Content-Type: multipart/related; type="application/dicom"."""
    boundary = "cxrd-" + secrets.token_hex(16)
    body = bytearray()
    for part in parts:
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        body += part + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return bytes(body), f'multipart/related; type="application/dicom"; boundary={boundary}'


def post(dest: StowDestination, parts: list[bytes], sop_uids: list[str]) -> None:
    """One STOW-RS request; returns when the peer stored every object, raises SendError/RefusedError."""
    u = urllib.parse.urlsplit(dest.url)
    where = dest.describe()
    body, content_type = multipart(parts)
    headers = {"Content-Type": content_type, "Accept": "application/dicom+json",
               "Content-Length": str(len(body)), "User-Agent": "cxrd"}
    if dest.authorization:
        headers["Authorization"] = dest.authorization
    path = (u.path.rstrip("/") + "/studies") + (f"?{u.query}" if u.query else "")
    if u.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            u.hostname, u.port, timeout=dest.timeout_s, context=dest.tls or ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=dest.timeout_s)
    deadline = Deadline(conn, dest.timeout_s)
    too_slow = f"{where}: no complete answer within {dest.timeout_s:g} s"
    try:
        conn.connect()
        if deadline.fired:  # it fired while the socket was being made, before it could be cut
            raise SendError(too_slow)
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        status = resp.status
        data = resp.read(MAX_RESPONSE + 1)
        deadline.cancel()
    except ssl.SSLError as exc:
        if deadline.fired:
            raise SendError(too_slow) from None
        raise SendError(f"{where}: TLS failed ({exc.reason or type(exc).__name__})") from None
    except (OSError, http.client.HTTPException) as exc:
        if deadline.fired:
            raise SendError(too_slow) from None
        raise SendError(f"{where} not reachable or no answer ({type(exc).__name__})") from None
    finally:
        deadline.cancel()
        conn.close()
    if deadline.fired:  # a body read to the end of the connection looks complete when cut: it is not
        raise SendError(too_slow)
    if 300 <= status < 400:
        raise RefusedError(f"{where} answered HTTP {status} (a redirect; set results.stow.url to the final URL)")
    if status in RETRYABLE_4XX or status >= 500:
        raise SendError(f"{where} answered HTTP {status}")
    if status in (401, 403):
        raise RefusedError(f"{where} answered HTTP {status} (check results.stow.auth and credentials_file)")
    if len(data) > MAX_RESPONSE:  # nothing in it can be trusted, not even a success: try again later
        raise SendError(f"{where} answered HTTP {status} with a response larger than {MAX_RESPONSE} bytes")
    failed, stored = _outcome(data)
    if failed:
        reasons = ", ".join(sorted({f"0x{r:04X}" for r in failed if r is not None})) or "no reason given"
        raise RefusedError(f"{where} refused {len(failed)} of {len(parts)} object(s) (failure reason {reasons})")
    if status >= 400:
        raise RefusedError(f"{where} answered HTTP {status}")
    if status not in (200, 202):
        raise SendError(f"{where} answered HTTP {status}, not a STOW-RS success")
    if stored is not None and not set(sop_uids) <= stored:
        raise SendError(f"{where} did not confirm {len(set(sop_uids) - stored)} of {len(parts)} object(s)")


class Deadline:
    """Cuts `conn` once `seconds` have passed since it was made: http.client's timeout bounds each
    socket operation, not the request. `fired` says the request ran out of time (whatever error, or
    none, the cut then caused)."""

    def __init__(self, conn: http.client.HTTPConnection, seconds: float):
        self.fired = False
        self._over = False  # set by cancel(): an answer read in time is never declared late
        self._lock = threading.Lock()
        self._conn = conn
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            if self._over:
                return
            self.fired = True
            sock = self._conn.sock
        if sock is not None:
            try:  # the plain socket's shutdown: an SSLSocket's own would drop its TLS state from this thread
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # a blocked send or receive returns at once
            except OSError:
                pass

    def cancel(self) -> None:
        with self._lock:
            self._over = True
        self._timer.cancel()


def _outcome(data: bytes) -> tuple[list[int | None] | None, set[str] | None]:
    """(failure reasons of the Failed SOP Sequence, SOP Instance UIDs the peer says it stored) from a
    DICOM JSON response; (None, None) when the body is empty, XML or not what PS3.18 describes."""
    try:
        doc = json.loads(data) if data.strip() else None
    except ValueError:
        return None, None
    if isinstance(doc, list) and len(doc) == 1:
        doc = doc[0]
    if not isinstance(doc, dict):
        return None, None

    def items(tag: str) -> list[dict] | None:
        elem = doc.get(tag)
        if not isinstance(elem, dict):
            return None
        value = elem.get("Value", [])
        return [i for i in value if isinstance(i, dict)] if isinstance(value, list) else []

    def first(item: dict, tag: str) -> object:
        value = item.get(tag, {}).get("Value") if isinstance(item.get(tag), dict) else None
        return value[0] if isinstance(value, list) and value else None

    failed_items = items(FAILED_SOP_SEQUENCE)
    failed = None
    if failed_items:
        failed = [r if isinstance(r := first(i, FAILURE_REASON), int) else None for i in failed_items]
    stored_items = items(REFERENCED_SOP_SEQUENCE)
    stored = None if stored_items is None else {str(first(i, REFERENCED_SOP_INSTANCE_UID)) for i in stored_items}
    return failed, stored
