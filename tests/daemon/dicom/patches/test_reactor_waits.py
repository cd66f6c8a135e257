"""pynetdicom's reactor sleeps become waits that end when there is work. These tests use real
pynetdicom threads and objects; the time bounds are generous (a wait that was NOT woken would take
the full second), so they check the wake-up, not speed."""
from __future__ import annotations

import time

import pynetdicom.association
import pynetdicom.dul
import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

from daemon.dicom.patches import reactor_waits


@pytest.fixture(autouse=True)
def installed():
    reactor_waits.install()
    yield
    reactor_waits.uninstall()


def _in_thread_of(thread_cls, target):
    """Run target() as the run() of a thread of pynetdicom's class, the way its reactors run."""
    result = {}

    class Probe(thread_cls):
        def run(self):
            t0 = time.monotonic()
            target(self)
            result["seconds"] = time.monotonic() - t0
    return Probe, result


def test_install_is_idempotent_and_only_touches_pynetdicoms_reactor_modules():
    reactor_waits.install()
    assert isinstance(pynetdicom.dul.time, reactor_waits._Clock)
    assert isinstance(pynetdicom.association.time, reactor_waits._Clock)
    assert pynetdicom.dul.time.monotonic is time.monotonic  # the rest of `time` is untouched
    t0 = time.monotonic()
    pynetdicom.dul.time.sleep(0.05)  # any other thread: a real sleep
    assert time.monotonic() - t0 >= 0.045


def test_an_idle_dul_wakes_as_soon_as_a_primitive_is_queued_to_send():
    assoc = Association(AE(), "acceptor")
    Probe, result = _in_thread_of(DULServiceProvider, lambda dul: pynetdicom.dul.time.sleep(1.0))
    dul = Probe(assoc)
    reactor_waits._dul_wakeup(dul)  # what its first sleep sets up
    dul.socket = None  # no connection: falls back to a plain sleep of the asked time
    dul.start()
    dul.join()
    assert result["seconds"] >= 0.9

    connected = _fake_connected_socket()
    dul = Probe(assoc)
    dul.socket = connected
    reactor_waits._dul_wakeup(dul)
    dul.start()
    time.sleep(0.05)
    dul.to_provider_queue.put("a primitive")
    dul.join(2)
    assert result["seconds"] < 0.5  # woken by the put, not by the 1 s timeout


def test_the_dul_of_an_association_we_requested_sleeps_as_pynetdicom_wrote_it():
    """The results sender's associations do not depend on whether the adjustments are installed."""
    assoc = Association(AE(), "requestor")
    Probe, result = _in_thread_of(DULServiceProvider, lambda dul: pynetdicom.dul.time.sleep(0.5))
    dul = Probe(assoc)
    dul.socket = _fake_connected_socket()
    dul.start()
    time.sleep(0.05)
    dul.to_provider_queue.put("a primitive")
    dul.join(2)
    assert result["seconds"] >= 0.45  # not woken by the put
    assert not hasattr(dul, "_cxrd_wake")


def test_uninstall_gives_pynetdicom_the_real_time_module_back():
    reactor_waits.uninstall()
    assert pynetdicom.dul.time is time and pynetdicom.association.time is time
    assert not reactor_waits.installed()


def _association_wait_woken_by(put) -> tuple[float, Association]:  # noqa: ANN001
    """Seconds an idle association reactor's 1 s wait lasted when `put(assoc)` ran 50 ms into it."""
    Probe, result = _in_thread_of(Association, lambda a: pynetdicom.association.time.sleep(0.001))
    assoc = Probe(AE(), "acceptor")
    reactor_waits.IDLE_WAIT_S, saved = 1.0, reactor_waits.IDLE_WAIT_S
    try:
        assoc.start()
        time.sleep(0.05)
        put(assoc)
        assoc.join(2)
    finally:
        reactor_waits.IDLE_WAIT_S = saved
    return result["seconds"], assoc


def test_an_association_reactor_wakes_when_a_dimse_message_completes():
    seconds, _ = _association_wait_woken_by(lambda assoc: assoc.dimse.msg_queue.put((1, "a message")))
    assert seconds < 0.5


def test_an_association_reactor_wakes_when_the_peer_asks_to_release():
    """A-RELEASE (or A-ABORT) reaches the association through the DUL's user queue, not the DIMSE
    queue; the reactor must notice it at once, or every release answers a timer tick late."""
    from pynetdicom.pdu_primitives import A_RELEASE
    seconds, assoc = _association_wait_woken_by(lambda a: a.dul.to_user_queue.put(A_RELEASE()))
    assert seconds < 0.5
    assert isinstance(assoc.dul.to_user_queue.get_nowait(), A_RELEASE)  # still there for pynetdicom


def test_a_failing_wait_falls_back_to_a_plain_sleep_instead_of_killing_the_reactor():
    assoc = Association(AE(), "acceptor")
    Probe, result = _in_thread_of(DULServiceProvider, lambda dul: pynetdicom.dul.time.sleep(0.05))
    dul = Probe(assoc)
    dul.to_provider_queue = None  # broken state: the wait raises inside
    dul.start()
    dul.join(2)
    assert result["seconds"] >= 0.045


class _fake_connected_socket:
    """An AssociationSocket stand-in holding a real, connected (but silent) TCP socket."""

    def __init__(self):
        import socket
        self.socket, self._peer = socket.socketpair()
