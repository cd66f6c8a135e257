"""The SCP's server class overrides pynetdicom's `AssociationServer.get_request` (a socket timeout on
every accepted connection, the TLS handshake moved off the accept loop). Its upstream source is
pinned like the adjustments' (daemon.dicom.patches), so an upgrade that changes how pynetdicom
accepts a connection is read before it ships."""
from __future__ import annotations

from pynetdicom.transport import AssociationServer

from daemon.dicom import scp
from daemon.dicom.patches import source_sha256

GET_REQUEST_SHA256 = "925a4f3a3042f6e4b944505d06dc19c41e10ff7dec5385c794d62d31fd000300"


def test_the_overridden_get_request_is_the_pinned_upstream_source():
    assert scp._GatedServer.get_request is not AssociationServer.get_request
    assert source_sha256(AssociationServer.get_request) == GET_REQUEST_SHA256, (
        "pynetdicom changed AssociationServer.get_request: compare it with scp._GatedServer.get_request, "
        "then pin the new hash")
