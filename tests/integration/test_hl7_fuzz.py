"""A fuzz campaign against the HL7 MLLP port of a real `cxrd serve`, bounded in count and time, on loopback.

What is sent (seeded: `HL7_FUZZ_SEED`, and each finding names its case):
- MLLP framing abuse: no start block, a nested start block, a frame never ended (read time-out), an
  end block without CR, a frame split byte by byte, a frame trickled slower than the read time-out,
  more idle connections than hl7.listen.max_connections, a 100 MB frame (far above the frame bound).
- HL7 abuse: no MSH, another field separator, broken encoding characters, unknown and odd MSH-18
  character sets, bytes invalid in the declared set, NULs and control bytes, 10,000 segments, deep
  repetitions and components, an ORU without OBR or OBX, other message types, a duplicate control
  id, Study Instance UIDs and accession numbers that are too long or hold delimiters, bad escapes.
- A few thousand random mutations of valid ORU^R01 messages built from the real IU reports.

What must hold (while python-hl7's `mllp_send` keeps sending valid reports in parallel):
- every message is answered with one well-formed ACK (AA, AE or AR as the case calls for), or, for a
  framing error, the connection is closed; every parallel `mllp_send` gets AA;
- AA only when a report row exists: rows = AAs that recorded = `report.received` audit rows, and
  every report text kept is one vault object; nothing is recorded for AE/AR;
- the daemon's peak resident set grows by less than `RSS_GROWTH_BOUND_KIB` (the listener's bound);
- the log has no traceback and none of the marker strings planted in report texts and names.
"""
from __future__ import annotations

import json
import os
import random
import re
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from conftest import free_port
from daemon.hl7 import messages
from storage.keys import load_keys
from storage.reports import message_key
from test_hl7_intake import MARKER, NAME_MARKER, hl7_env, iu_reports, mllp_send, oru

SEED = int(os.environ.get("HL7_FUZZ_SEED", "2575"))
MUTATED_CASES = int(os.environ.get("HL7_FUZZ_CASES", "3000"))
TIME_BUDGET_S = float(os.environ.get("HL7_FUZZ_SECONDS", "20"))  # for the random mutations
MAX_MESSAGE_BYTES = 1 << 20   # the default hl7.listen.max_message_bytes
MAX_CONNECTIONS = 12
READ_TIMEOUT_S = 2
IDLE_TIMEOUT_S = 6
# The listener holds at most max_connections frames of max_message_bytes (plus a read chunk) and
# parses two messages at a time, each bounded to ~17 MiB of parser objects (README: Reports from the
# RIS): 12 x 1 MiB + 2 x 17 MiB = 46 MiB, plus decoded copies of the frames in flight. (Before the
# parser bounds, one 200,000-component message alone grew it by ~90 MiB.)
RSS_GROWTH_BOUND_KIB = 64 * 1024
SB, EB, CR = b"\x0b", b"\x1c", b"\x0d"
ACCESSION = "FZ0005"  # in OBR-3 and OBR-18 of base message 5
ACK_RE = re.compile(rb"\AMSH\|\^~\\&\|[^\r]*\rMSA\|(A[AER])\|[^\r]*\r(ERR\|[^\r]*\r)?\Z")


# -- a raw MLLP client -----------------------------------------------------------------------------
def read_frame(sock: socket.socket, seconds: float) -> bytes | None:
    """The next frame's payload; None if the daemon closed (or reset) the connection first.
    Raises socket.timeout if nothing complete came within `seconds`."""
    buf = b""
    deadline = time.monotonic() + seconds
    while EB + CR not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("no ACK")
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return None
        if not chunk:
            return None
        buf += chunk
    assert buf.startswith(SB) and buf.endswith(EB + CR), buf[:80]
    return buf[1:-2]


def ack_code(ack: bytes) -> str:
    """MSA-1 of a well-formed ACK (checked: printable ASCII, MSH, MSA, ERR for an error, nothing else)."""
    assert all(32 <= b < 127 or b == 13 for b in ack), ack[:200]
    m = ACK_RE.match(ack)
    assert m, ack[:300]
    assert (m.group(1) == b"AA") == (m.group(2) is None), ack[:300]
    return m.group(1).decode()


class Client:
    """One connection, reopened whenever the daemon closes it."""

    def __init__(self, port: int):
        self.port = port
        self.sock: socket.socket | None = None
        self.last = b""  # the last ACK

    @property
    def recorded(self) -> bool:
        """The last ACK was an AA that recorded the report (not one for a duplicate)."""
        return self.last.split(b"\r")[1].startswith(b"MSA|AA|") and b"duplicate" not in self.last

    def exchange(self, payload: bytes, seconds: float = 30.0) -> str:
        """The ACK code, or "closed" when the connection was closed instead."""
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        try:
            self.sock.sendall(SB + payload + EB + CR)
            ack = read_frame(self.sock, seconds)
        except (BrokenPipeError, ConnectionResetError):
            ack = None
        if ack is None:
            self.close()
            self.last = b""
            return "closed"
        self.last = ack
        return ack_code(ack)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def closed_without_ack(port: int, data: bytes, seconds: float, *, pause: float = 0.0,
                       step: int = 0) -> bool:
    """Send `data` (in `step`-byte pieces `pause` seconds apart when step > 0); True if the daemon
    then closed the connection without sending anything."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            if step:
                for i in range(0, len(data), step):
                    s.sendall(data[i:i + step])
                    time.sleep(pause)
            else:
                s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return True
        try:
            return read_frame(s, seconds) is None
        except socket.timeout:
            return False


# -- messages --------------------------------------------------------------------------------------
def base_messages(shared_data: Path, n: int) -> list[bytes]:
    """Valid ORU^R01 from real IU reports; the control id placeholder CTRLXXXXXX is set per case."""
    out = []
    for i, report in enumerate(iu_reports(shared_data, n)):
        out.append(oru(report, "CTRLXXXXXX", study_uid=f"1.2.826.0.1.3680043.8.498.7{i:03d}",
                       accession=f"FZ{i:04d}" if i % 2 else ""))
    return out


def with_id(message: bytes, control_id: str) -> bytes:
    return message.replace(b"CTRLXXXXXX", control_id.encode(), 1)


def targeted(base: bytes) -> list[tuple[str, bytes, set[str]]]:
    """(name, message, acceptable ACK codes) for the named HL7 abuses."""
    m = with_id(base, "T-BASE").decode("latin-1")
    msh, rest = m.split("\r", 1)

    def msh18(value: str) -> str:
        return msh + "||||||" + value + "\r" + rest

    cases: list[tuple[str, str | bytes, set[str]]] = [
        ("no MSH", rest, {"AE"}),
        ("PID first", "PID|1\r" + m, {"AE"}),
        ("field separator #", m.replace("|", "#"), {"AA"}),  # any character may be the separator
        ("field separator only in MSH", "MSH#" + msh[4:] + "\r" + rest, {"AE", "AR"}),
        ("encoding characters repeated", m.replace("^~\\&", "^^^^", 1), {"AE"}),
        ("encoding characters missing", m.replace("|^~\\&|", "||", 1).replace("MSH||", "MSH|", 1), {"AE", "AR"}),
        ("MSH only", "MSH|^~\\&|", {"AE"}),
        ("MSH-18 unknown", msh18("KLINGON"), {"AR"}),
        ("MSH-18 odd bytes", msh18("\xff\xfe~^&"), {"AR"}),
        ("MSH-18 UNICODE (no encoding form)", msh18("UNICODE"), {"AR"}),
        ("MSH-18 UTF-8, invalid bytes", msh18("UNICODE UTF-8").encode("latin-1").replace(b"Heart", b"He\xc3\x28rt"),
         {"AE"}),
        ("MSH-18 ASCII, latin-1 bytes", msh18("ASCII").replace("Heart", "H\xe9art"), {"AE"}),
        ("NUL in text", m.replace(MARKER, MARKER + "\x00"), {"AE"}),
        ("control bytes", m.replace(MARKER, MARKER + "\x01\x07\x1b\x7f"), {"AE"}),
        ("start block in text", m.replace(MARKER, MARKER + "\x0b"), {"AE"}),
        ("10,000 segments", m + "NTE|1||x\r" * 10000, {"AR"}),
        ("deep repetitions", m.replace(MARKER, "~".join(["a^b&c"] * 30000)), {"AR"}),
        ("deep components", m.replace(MARKER, "^" * 200000), {"AR"}),
        ("deep subcomponents", m.replace(MARKER, "&" * 200000), {"AR"}),
        ("no OBR", "\r".join(s for s in m.split("\r") if not s.startswith("OBR")), {"AE"}),
        ("no OBX", "\r".join(s for s in m.split("\r") if not s.startswith("OBX")), {"AE"}),
        ("OBX not text", m.replace("|TX|", "|NM|"), {"AE"}),
        ("ADT^A01", m.replace("ORU^R01", "ADT^A01"), {"AR"}),
        ("ORM^O01", m.replace("ORU^R01", "ORM^O01"), {"AR"}),
        ("ACK", m.replace("ORU^R01", "ACK"), {"AR"}),
        ("ORU^R01 with subcomponents", m.replace("ORU^R01", "ORU&X^R01"), {"AR"}),
        ("debug processing id", m.replace("|P|2.5.1", "|D|2.5.1"), {"AR"}),
        ("no control id", m.replace("|T-BASE|", "||"), {"AE"}),
        ("control id 300 chars", m.replace("T-BASE", "C" * 300), {"AE"}),
        ("study UID 65 chars", re.sub(r"ZDS\|[0-9.]+", "ZDS|1." + "2" * 63, m), {"AE"}),
        ("study UID with subcomponent", re.sub(r"ZDS\|([0-9.]+)", r"ZDS|\1&9", m), {"AE"}),
        ("study UID with letters", re.sub(r"ZDS\|([0-9.]+)", r"ZDS|\1.x", m), {"AE"}),
        ("accession 65 chars", m.replace(ACCESSION, "A" * 65), {"AE"}),
        ("accession with subcomponent", m.replace(ACCESSION, ACCESSION + "&X"), {"AE"}),
        ("accession with an escape", m.replace(ACCESSION, ACCESSION + "\\T\\X"), {"AE"}),
        ("bad hex escape", m.replace(MARKER, MARKER + " \\Xzz\\"), {"AE"}),
        ("hex escape to NUL", m.replace(MARKER, MARKER + " \\X00\\"), {"AE"}),
        ("segment without a name", m + "|||\r", {"AA", "AE"}),
    ]
    assert ACCESSION in m
    return [(name, v if isinstance(v, bytes) else v.encode("latin-1"), codes) for name, v, codes in cases]


def mutate(message: bytes, index: int) -> tuple[bytes, list[str]]:
    """Case `index`'s mutated message (deterministic in SEED and index) and its mutations' names."""
    rng = random.Random(SEED * 1_000_003 + index)
    body = bytearray(with_id(message, f"M{index:06d}"))
    applied = []
    delimiters = b"|^~\\&\r"
    for _ in range(rng.choice((1, 1, 2, 3, 5))):
        kind = rng.choice(("flip", "delimiter", "delete", "duplicate", "insert", "truncate", "swap",
                           "grow", "high", "msh"))
        applied.append(kind)
        at = rng.randrange(len(body)) if body else 0
        if kind == "flip" and body:
            body[at] ^= 1 << rng.randrange(8)
        elif kind == "delimiter" and body:
            body[at] = rng.choice(delimiters)
        elif kind == "delete":
            del body[at:at + rng.randrange(1, 40)]
        elif kind == "duplicate":
            body[at:at] = body[at:at + rng.randrange(1, 200)]
        elif kind == "insert":
            body[at:at] = rng.randbytes(rng.randrange(1, 16))
        elif kind == "truncate":
            body = body[:at]
        elif kind == "swap":
            segs = bytes(body).split(b"\r")
            i, j = rng.randrange(len(segs)), rng.randrange(len(segs))
            segs[i], segs[j] = segs[j], segs[i]
            body = bytearray(b"\r".join(segs))
        elif kind == "grow":
            body[at:at] = bytes([rng.choice(delimiters + b"ab ")]) * rng.choice((100, 5000, 60000))
        elif kind == "high":
            body[at:at] = rng.choice(("é\u00ff€".encode("utf-8"), "é\u00ff".encode("latin-1"), b"\x80\x9f\xff"))
        elif kind == "msh" and len(body) > 12:
            body[rng.randrange(3, 12)] = rng.randrange(256)
    return bytes(body).replace(EB, b"\x1d"), applied  # EB in the text is framing abuse, tested apart


# -- the daemon side -------------------------------------------------------------------------------
def vm_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} for {pid}")


def counts(state_dir: Path) -> dict[str, int]:
    engine = create_engine(f"sqlite:///{state_dir / 'cxrd.db'}")
    with engine.connect() as c:
        out = {"rows": c.execute(text("SELECT count(*) FROM reports")).scalar(),
               "text objects": c.execute(text("SELECT count(*) FROM reports WHERE text_object IS NOT NULL")).scalar(),
               "received": c.execute(text("SELECT count(*) FROM audit_events WHERE event_type = 'report.received'"))
               .scalar(),
               # refused messages are counted into rows (daemon.ops.refusal_audit): the sum of their counts
               "refused": sum(json.loads(d)["count"] for (d,) in c.execute(text(
                   "SELECT details FROM audit_events WHERE event_type = 'report.refused'")))}
    engine.dispose()
    out["vault objects"] = sum(1 for p in (state_dir / "vault").rglob("*") if p.is_file() and p.stat().st_size > 0)
    return out


def recorded_keys(state_dir: Path) -> set[str]:
    engine = create_engine(f"sqlite:///{state_dir / 'cxrd.db'}")
    with engine.connect() as c:
        keys = {k for (k,) in c.execute(text("SELECT message_key FROM reports"))}
    engine.dispose()
    return keys


@pytest.mark.slow  # ~40 s on a loaded 2-core machine; part of the normal suite
def test_hl7_fuzz_campaign(daemon_factory, shared_data, tmp_path, capsys):  # noqa: ANN001
    port = free_port()
    d = daemon_factory(hl7_env(port, CXRD_HL7__LISTEN__MAX_MESSAGE_BYTES=str(MAX_MESSAGE_BYTES),
                               CXRD_HL7__LISTEN__MAX_CONNECTIONS=str(MAX_CONNECTIONS),
                               CXRD_HL7__LISTEN__MAX_CONNECTIONS_PER_HOST="0",
                               CXRD_HL7__LISTEN__READ_TIMEOUT_S=str(READ_TIMEOUT_S),
                               CXRD_HL7__LISTEN__IDLE_TIMEOUT_S=str(IDLE_TIMEOUT_S))).start()
    pid = d.proc.pid
    bases = base_messages(shared_data, 12)
    keys = load_keys(d.state_dir / "keys" / "master.key", d.state_dir / "keys" / "keyring.json")
    wrong: list[str] = []
    outcomes: Counter = Counter()
    recorded_aa = 0   # AAs that recorded a report (not those answering a duplicate)
    lock = threading.Lock()

    warm = Client(port)
    assert warm.exchange(with_id(bases[0], "WARM-1")) == "AA"
    warm.close()
    recorded_aa += warm.recorded
    baseline_hwm = vm_kib(pid, "VmHWM")
    started = time.monotonic()

    # 1. More idle connections than the limit: those over it are closed unread; then all are let go.
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(MAX_CONNECTIONS + 4)]
    time.sleep(0.5)
    shut = 0
    for s in idle:
        s.settimeout(0.3)
        try:
            shut += s.recv(1) == b""
        except socket.timeout:
            pass
        except ConnectionResetError:
            shut += 1
    if shut != 4:
        wrong.append(f"{shut} of {MAX_CONNECTIONS + 4} idle connections closed, expected 4")
    for s in idle:
        s.close()
    time.sleep(0.3)
    lingering = socket.create_connection(("127.0.0.1", port), timeout=5)  # must be closed at the idle time-out
    lingering.settimeout(0.5)
    try:
        lingering.recv(1)
        wrong.append("a connection within the limits was closed at once")
    except socket.timeout:
        pass

    # The parallel sender: python-hl7's mllp_send, valid reports, throughout.
    parallel: list[tuple[str, str]] = []
    stop = threading.Event()

    def send_in_parallel() -> None:
        i = 0
        while not stop.is_set():
            cid = f"PAR-{i:04d}"
            parallel.append((cid, mllp_send(port, with_id(bases[i % len(bases)], cid), tmp_path)))
            i += 1
            stop.wait(0.5)
    pusher = threading.Thread(target=send_in_parallel, daemon=True)
    pusher.start()

    # 2. Framing abuse (each on its own connection, in parallel: several wait for a time-out).
    valid = with_id(bases[1], "F-VALID")
    framing = {
        "no start block": (valid + EB + CR, 0.0, 0),
        "end block without CR": (SB + valid + EB + b"x" * 100, 0.0, 0),
        "end block without CR, then a frame": (SB + valid + EB + SB + valid + EB + CR, 0.0, 0),
        "frame never ended": (SB + valid, 0.0, 0),
        "garbage": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0.0, 0),
        "trickled slower than the read time-out": (SB + valid + EB + CR, READ_TIMEOUT_S / 8, 64),
    }
    with ThreadPoolExecutor(len(framing)) as pool:
        futures = {name: pool.submit(closed_without_ack, port, data, READ_TIMEOUT_S * 3 + 5, pause=pause, step=step)
                   for name, (data, pause, step) in framing.items()}
        for name, f in futures.items():
            if not f.result():
                wrong.append(f"framing: {name}: not closed without an ACK")
            outcomes["framing closed"] += 1

    c = Client(port)
    nested = c.exchange(with_id(bases[2], "F-NESTED").replace(b"OBX|1", SB + b"OBX|1", 1))
    if nested != "AE":
        wrong.append(f"framing: nested start block answered {nested}")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:  # one byte at a time
        for b in SB + with_id(bases[3], "F-BYTES") + EB + CR:
            s.sendall(bytes([b]))
        code = ack_code(read_frame(s, 30) or b"")
    recorded_aa += code == "AA"
    if code != "AA":
        wrong.append(f"framing: a frame split byte by byte answered {code}")

    # A 100 MB OBX: AR after at most max_message_bytes were buffered, then the connection closes.
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        ack: list[bytes | None] = []
        reader = threading.Thread(target=lambda: ack.append(read_frame(s, 30)), daemon=True)
        reader.start()
        head = with_id(bases[4], "F-HUGE").split(b"OBX|1")[0] + b"OBX|1|TX|18782-3^F^LN||"
        chunk = (MARKER.encode() + b" heart size normal ") * 4096
        try:
            s.sendall(SB + head)
            for _ in range(100 * (1 << 20) // len(chunk)):
                s.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reader.join(30)
        huge = ack_code(ack[0]) if ack and ack[0] else "closed"
    if huge != "AR":
        wrong.append(f"a 100 MB frame answered {huge}")
    outcomes["100 MB frame"] = huge
    phases = {"framing": time.monotonic() - started}

    # 3. Named HL7 abuses, then a duplicate control id.
    for name, message, codes in targeted(bases[5]):
        code = c.exchange(message)
        outcomes[f"targeted {code}"] += 1
        if code not in codes:
            wrong.append(f"targeted: {name} answered {code}, expected {sorted(codes)}")
        recorded_aa += c.recorded
    before = counts(d.state_dir)["rows"]
    for i in range(3):
        if c.exchange(with_id(bases[6], "DUP-1")) != "AA" or c.recorded != (i == 0):
            wrong.append(f"a duplicate control id was answered {c.last[:120]!r}")
    recorded_aa += 1
    if counts(d.state_dir)["rows"] != before + 1:
        wrong.append("a duplicate control id was recorded more than once")
    c.close()
    phases["targeted"] = time.monotonic() - started - sum(phases.values())

    # 4. Random mutations of valid messages over reused connections, three at a time.
    mutation_started = time.monotonic()
    accepted_keys: list[str] = []
    mutated_recorded = 0

    def campaign(indices: range) -> int:
        nonlocal mutated_recorded
        client, sent = Client(port), 0
        for index in indices:
            if time.monotonic() - mutation_started > TIME_BUDGET_S:
                break
            message, applied = mutate(bases[index % len(bases)], index)
            try:
                code = client.exchange(message)
            except (AssertionError, socket.timeout, OSError) as exc:
                with lock:
                    wrong.append(f"mutation {index} {applied}: {type(exc).__name__}: {str(exc)[:200]}")
                client.close()
                continue
            sent += 1
            with lock:
                outcomes[f"mutated {code}"] += 1
                if code == "closed":
                    wrong.append(f"mutation {index} {applied}: connection closed without an ACK")
            if code == "AA":
                try:  # which row it must have: (sender, MSH-10) as the daemon reads them
                    parsed = messages.parse(message)
                    key = message_key(keys.uid_key, parsed.sender, parsed.control_id)
                except messages.Refusal as r:
                    key = f"answered AA but {r.reason}"
                with lock:
                    accepted_keys.append(key)
                    mutated_recorded += client.recorded
        client.close()
        return sent
    workers = 3
    per = MUTATED_CASES // workers
    with ThreadPoolExecutor(workers) as pool:
        sent = sum(pool.map(campaign, [range(w * per, (w + 1) * per) for w in range(workers)]))
    phases["mutated"] = time.monotonic() - started - sum(phases.values())

    stop.set()
    pusher.join(120)
    # The connection left idle since the start was closed by the daemon at the idle time-out.
    lingering.settimeout(1)
    try:
        idle_closed = lingering.recv(1) == b""
    except socket.timeout:
        idle_closed = False
    except ConnectionResetError:
        idle_closed = True
    lingering.close()
    elapsed = time.monotonic() - started
    peak_growth = vm_kib(pid, "VmHWM") - baseline_hwm
    refusals = sum(v for k, v in outcomes.items() if k.endswith(("AE", "AR")))
    final, deadline = counts(d.state_dir), time.monotonic() + 10
    while final["refused"] < refusals and time.monotonic() < deadline:  # the last second's row is written next
        time.sleep(0.5)
        final = counts(d.state_dir)
    stored = recorded_keys(d.state_dir)

    with capsys.disabled():
        print(f"\nhl7 fuzz seed={SEED} mutated={sent} of {MUTATED_CASES} in {elapsed:.0f}s; "
              f"peak RSS growth={peak_growth} KiB; parallel mllp_send={len(parallel)}; counts={final}; "
              f"outcomes={dict(outcomes)}; phases={ {k: round(v, 1) for k, v in phases.items()} }")

    log = d.log_text()
    crashes = [line[:300] for line in log.splitlines() if "Traceback" in line or "hl7.connection_failed" in line]
    assert wrong == [], (wrong[:20], crashes[:10])
    assert d.proc.poll() is None
    assert parallel and all(code == "AA" for _, code in parallel), parallel
    assert idle_closed, "an idle connection outlived hl7.listen.idle_timeout_s"
    assert peak_growth < RSS_GROWTH_BOUND_KIB, (peak_growth, baseline_hwm)
    assert sent >= min(MUTATED_CASES, 1000) or phases["mutated"] > TIME_BUDGET_S, sent
    # AA only when a row exists; nothing stored for AE/AR.
    missing = [k for k in accepted_keys if k not in stored]
    assert missing == [], f"{len(missing)} mutated messages answered AA without a report row"
    parallel_keys = {message_key(keys.uid_key, "RIS^GENHOSP", cid) for cid, _ in parallel}
    assert parallel_keys <= stored
    expected_rows = recorded_aa + mutated_recorded + len(parallel)
    assert final["rows"] == final["received"] == expected_rows, (final, expected_rows)
    assert final["vault objects"] == final["text objects"], final
    assert final["refused"] >= refusals, (final, refusals)
    assert "Traceback" not in log and " trace=" not in log, log[-3000:]
    for marker in (MARKER, NAME_MARKER):
        assert marker not in log, f"{marker} in the log"
    for path in d.state_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert MARKER.encode() not in data and NAME_MARKER.encode() not in data, f"marker in {path}"
