"""The server's presentation contexts are copied per association by pynetdicom; ours copy cheaply
but must still be equal and independent copies, or one association's negotiation could leak into
the next."""
from __future__ import annotations

import copy

from pynetdicom import AE, AllStoragePresentationContexts

from daemon.dicom import scp


def _as_tuples(contexts) -> list[tuple]:
    return [(cx.abstract_syntax, tuple(cx.transfer_syntax), cx.scu_role, cx.scp_role, cx.context_id)
            for cx in contexts]


def test_per_association_copy_equals_a_deep_copy_and_is_independent(scp_handle):
    contexts = scp_handle.server.contexts
    assert isinstance(contexts, scp._Contexts)
    assert len(contexts) > len(AllStoragePresentationContexts)  # storage classes + Verification
    cheap = copy.deepcopy(contexts)
    assert type(cheap) is list and _as_tuples(cheap) == _as_tuples(copy.deepcopy(list(contexts)))
    assert all(a is not b and a.transfer_syntax is not b.transfer_syntax for a, b in zip(cheap, contexts))
    before = _as_tuples(contexts)
    cheap[1].transfer_syntax.clear()  # what negotiation may do to its copy
    cheap[1].context_id = 7
    assert _as_tuples(contexts) == before


def test_an_association_negotiates_through_the_copied_contexts(scp_handle):
    ae = AE("PROBE")
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1.1", ["1.2.840.10008.1.2.1"])  # DX for presentation
    assoc = ae.associate("127.0.0.1", scp_handle.port, ae_title="CXRD")
    try:
        assert assoc.is_established
        assert {cx.abstract_syntax for cx in assoc.accepted_contexts} == {
            "1.2.840.10008.1.1", "1.2.840.10008.5.1.4.1.1.1.1"}
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
