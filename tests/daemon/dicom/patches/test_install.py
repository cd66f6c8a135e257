"""The adjustments as one package: installed all or none, only on the pinned upstream, or not at all
when switched off; one log line says which. The pin test is the one an upgrade of pynetdicom or
pydicom must fail."""
from __future__ import annotations

import importlib
import logging

import pydicom
import pynetdicom
import pytest
from pydicom.uid import UID
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket

from daemon.dicom import patches
from daemon.dicom.patches import fast_recv, reactor_waits, store_rsp, uid_checks


@pytest.fixture(autouse=True)
def stock_afterwards():
    patches.uninstall()
    yield
    patches.uninstall()


def _resolve(qualified: str):  # noqa: ANN202
    """The object a dotted name such as `pynetdicom.dul.DULServiceProvider.run_reactor` names."""
    parts = qualified.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = vars(obj)[attr] if isinstance(obj, type) else getattr(obj, attr)
        return obj.fget if isinstance(obj, property) else obj
    raise LookupError(qualified)


def test_every_replaced_upstream_function_has_the_pinned_source():
    """If this fails after an upgrade: read each function named below in the new version, check the
    adjustment that replaces it still keeps its contract (and adapt it), then pin the new hashes.
    Until then the daemon serves with stock pynetdicom (the version guard), more slowly."""
    current = {name: patches.source_sha256(fn) for name, fn in patches.upstream().items()}
    changed = {name: sha for name, sha in current.items() if patches.PINNED.get(name) != sha}
    assert not changed, "upstream source changed; new pins:\n" + "\n".join(
        f'    "{name}":\n        "{sha}",' for name, sha in changed.items())
    assert set(patches.PINNED) == set(current), "every replaced function is pinned, and nothing else"
    assert patches.running_versions() == patches.WRITTEN_FOR


def test_the_pinned_names_are_the_functions_upstream_defines_under_those_names():
    for name, original in patches.upstream().items():
        assert _resolve(name) is original, name


def test_install_puts_every_adjustment_in_place_and_says_so(caplog):
    with caplog.at_level(logging.INFO, logger="cxrd.scp"):
        assert patches.install() is True
    assert AssociationSocket.recv is fast_recv.recv
    assert DULServiceProvider._read_pdu_data is fast_recv.read_pdu_data
    assert DIMSEServiceProvider.send_msg is store_rsp.send_msg
    assert isinstance(pynetdicom.dul.time, reactor_waits._Clock)
    assert uid_checks.installed()
    assert [r.cxrd_fields["installed"] for r in caplog.records if r.msg == "dicom.adjustments"] == ["yes"]
    patches.uninstall()
    assert not patches.installed()
    assert AssociationSocket.recv is fast_recv._original
    assert DIMSEServiceProvider.send_msg is store_rsp._original
    assert pynetdicom.dul.time.sleep is not reactor_waits._Clock.sleep
    assert UID.is_valid is uid_checks._original


def _refused(caplog, **install_args) -> str:  # noqa: ANN001, ANN003
    """Install with these arguments; assert nothing was installed and one log line said why."""
    with caplog.at_level(logging.INFO, logger="cxrd.scp"):
        assert patches.install(**install_args) is False
    assert not patches.installed()
    assert AssociationSocket.recv is fast_recv._original and UID.is_valid is uid_checks._original
    (line,) = [r for r in caplog.records if r.msg == "dicom.adjustments"]
    assert line.cxrd_fields["installed"] == "no" and line.cxrd_fields["pynetdicom"] == "stock"
    return line.cxrd_fields["reason"]


def test_another_pynetdicom_version_installs_nothing(caplog, monkeypatch):
    monkeypatch.setattr(pynetdicom, "__version__", "3.0.5")
    reason = _refused(caplog)
    assert "pynetdicom 3.0.4" in reason and "pynetdicom 3.0.5" in reason


def test_another_pydicom_version_installs_nothing(caplog, monkeypatch):
    monkeypatch.setattr(pydicom, "__version__", "9.9.9")
    assert "pydicom 9.9.9" in _refused(caplog)


def test_an_upstream_function_whose_source_changed_installs_nothing(caplog, monkeypatch):
    monkeypatch.setitem(patches.PINNED, "pynetdicom.dimse.DIMSEServiceProvider.send_msg", "0" * 64)
    assert "DIMSEServiceProvider.send_msg" in _refused(caplog)


def test_the_setting_switches_them_off(caplog):
    assert "switched off" in _refused(caplog, enabled=False)
