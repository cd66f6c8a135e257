"""Wake pynetdicom's association threads when there is work, instead of letting them poll.

Each association runs two threads that poll. The DUL thread sleeps 1 ms whenever a loop found
nothing to do. The association thread sleeps 1 ms before every look at its DIMSE message queue.
On the C-STORE path that is up to three naps per image: the complete dataset waits for the
association thread, our response waits for the DUL thread, and the next request's PDUs wait for
it again; and at idle the polling costs a share of a core per open association. Polling faster is
no fix: it multiplies the idle cost.

So pynetdicom's `time.sleep`, as its `dul` and `association` modules see it, becomes a wait that
ends as soon as there is something to do:
- the DUL thread waits in `select` on its socket and on an eventfd. Putting a primitive to send,
  or an event, on its queues writes that eventfd.
- the association thread waits on its DIMSE message queue's condition, which is also notified
  when the DUL hands it an A-RELEASE or A-ABORT.
An idle association wakes every `IDLE_WAIT_S` to run pynetdicom's timer checks. Sleeps in any other
thread, and in the threads of an association we requested (the results sender's), are untouched.
Returning early from a sleep is always safe: every caller polls in a loop and checks its condition
again.
"""
from __future__ import annotations

import contextlib
import os
import queue
import select
import threading
import time
import weakref
from typing import Any

import pynetdicom.association
import pynetdicom.dul
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

IDLE_WAIT_S = 0.01  # the longest an idle reactor sleeps before pynetdicom looks at its timers again

_real_sleep = time.sleep
_MODULES = (pynetdicom.dul, pynetdicom.association)

# The upstream reactor loops whose sleeps become waits, by qualified name (their source is pinned).
REPLACES = {"pynetdicom.dul.DULServiceProvider.run_reactor": DULServiceProvider.run_reactor,
            "pynetdicom.association.Association._run_reactor": Association._run_reactor}


def install() -> None:
    """Replace the `time` module that pynetdicom's reactors see (idempotent)."""
    for module in _MODULES:
        if not isinstance(module.time, _Clock):
            module.time = _Clock()


def uninstall() -> None:
    """Give pynetdicom's reactors the real `time` back; a wait in progress ends at its timeout."""
    for module in _MODULES:
        module.time = time


def installed() -> bool:
    return any(isinstance(module.time, _Clock) for module in _MODULES)


class _Clock:
    """`time`, except that `sleep` in a reactor thread returns as soon as that thread has work."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        thread = threading.current_thread()
        try:
            if isinstance(thread, DULServiceProvider):
                return _dul_wait(thread, seconds)
            if isinstance(thread, Association):
                return _association_wait(thread, seconds)
        except Exception:  # noqa: BLE001 - a reactor thread must never die in a sleep: sleep plainly
            pass
        _real_sleep(seconds)


def _dul_wait(dul: DULServiceProvider, seconds: float) -> None:
    if not dul.assoc.is_acceptor:
        _real_sleep(seconds)
        return
    wake = _dul_wakeup(dul)
    if wake is None:
        _real_sleep(seconds)
        return
    if dul._kill_thread or dul.to_provider_queue.qsize() or dul.event_queue.qsize():
        return  # work arrived between pynetdicom's look and this sleep
    sock = getattr(dul.socket, "socket", None)
    try:
        if sock is None or sock.fileno() < 0:
            _real_sleep(seconds)
            return
        if getattr(sock, "pending", None) and sock.pending():  # TLS: decrypted bytes already buffered
            return
        ready, _, _ = select.select([sock, wake], [], [], max(seconds, IDLE_WAIT_S))
    except (OSError, ValueError):  # the socket closed under us: pynetdicom notices on its next loop
        _real_sleep(seconds)
        return
    if wake in ready:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(wake)


def _dul_wakeup(dul: DULServiceProvider) -> int | None:
    """This DUL's eventfd, created on its first sleep; its queues' `put` writes it from then on.

    Closed only when the DUL object is collected: until then its association may still put to
    its queues, and writing to a closed (and perhaps reused) descriptor number must never happen.
    """
    fd = getattr(dul, "_cxrd_wake", None)
    if fd is None:
        try:
            fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        except OSError:
            return None
        weakref.finalize(dul, os.close, fd)
        for q in (dul.to_provider_queue, dul.event_queue):
            _wake_on_put(q, fd)
        dul._cxrd_wake = fd
    return fd


def _wake_on_put(q: queue.Queue, fd: int) -> None:
    put = q.put

    def put_and_wake(item: Any, block: bool = True, timeout: float | None = None) -> None:
        put(item, block, timeout)
        with contextlib.suppress(OSError):  # counter full: the waiter wakes anyway
            os.eventfd_write(fd, 1)
    q.put = put_and_wake  # type: ignore[method-assign]


def _association_wait(assoc: Association, seconds: float) -> None:
    # Teardown pauses (kill, abort) stay as pynetdicom wrote them; so does a requestor's reactor
    # (only accepted associations are adjusted).
    if seconds > 0.001 or assoc.is_requestor:
        _real_sleep(seconds)
        return
    q = assoc.dimse.msg_queue
    if not getattr(assoc, "_cxrd_wakes_on_acse", False):
        _notify_on_put(assoc.dul.to_user_queue, q)
        assoc._cxrd_wakes_on_acse = True
    with q.not_empty:
        if not q._qsize() and not assoc.dul.to_user_queue.qsize():
            q.not_empty.wait(IDLE_WAIT_S)


def _notify_on_put(acse_queue: queue.Queue, dimse_queue: queue.Queue) -> None:
    """Wake the association thread when the DUL hands it an A-RELEASE or A-ABORT, not only a DIMSE
    message: otherwise it notices a peer's release request only at its next timer check, and every
    association's A-RELEASE-RP goes out that much late."""
    put = acse_queue.put

    def put_and_notify(item: Any, block: bool = True, timeout: float | None = None) -> None:
        put(item, block, timeout)
        with dimse_queue.not_empty:
            dimse_queue.not_empty.notify_all()
    acse_queue.put = put_and_notify  # type: ignore[method-assign]
