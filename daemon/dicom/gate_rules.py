"""The association gate's rules by name: which one refused a peer, in words the audit and log share.

Each refusal is audited and logged with the rule that refused it (aggregated per host and rule by
`daemon.ops.refusal_audit`), so these names are what a PACS administrator reads and searches for:
keep them stable. `dicom.*` in the comments is the setting behind each rule.
"""
from __future__ import annotations

from pynetdicom.association import Association

HOST_NOT_ALLOWED = "host not allowed"                          # dicom.allowed_hosts
PER_HOST_LIMIT = "per-host connection limit reached"           # dicom.max_associations_per_host
CALLED_AE_NOT_OURS = "called AE title is not ours"              # dicom.ae_title
CALLING_AE_NOT_ALLOWED = "calling AE title not allowed"        # dicom.allowed_calling_aets
ASSOCIATION_LIMIT = "association limit reached"                # dicom.max_associations
UNPARSEABLE_DATASET = "unparseable dataset"
DATASET_TOO_LARGE = "data set larger than dicom.max_dataset_bytes"  # dicom.max_dataset_bytes

# A-ASSOCIATE-RJ (result source, diagnostic) pairs for the provider's own reasons (PS3.8 9.3.4).
_PROVIDER_REASONS = {(3, 1): "temporary congestion", (3, 2): ASSOCIATION_LIMIT,
                     (2, 2): "protocol version not supported"}


def rejection_reasons(assoc: Association) -> str:
    """Every gate rule the association request broke, most general first, `; `-joined.

    pynetdicom answers with one diagnostic (the association limit over a wrong called AE title over a
    wrong calling AE title); the audit names them all, so a misconfigured PACS is fixed in one go."""
    rejection = assoc.acceptor.primitive
    request = assoc.requestor.primitive
    reasons = []
    provider = _PROVIDER_REASONS.get((getattr(rejection, "result_source", None),
                                      getattr(rejection, "diagnostic", None)))
    if provider:
        reasons.append(provider)
    ae = assoc.ae
    called = str(getattr(request, "called_ae_title", "") or "").strip()
    calling = str(getattr(request, "calling_ae_title", "") or "").strip()
    if ae.require_called_aet and called != assoc.acceptor.ae_title.strip():
        reasons.append(CALLED_AE_NOT_OURS)
    if ae.require_calling_aet and calling not in [t.strip() for t in ae.require_calling_aet]:
        reasons.append(CALLING_AE_NOT_ALLOWED)
    if not reasons:  # a rule of pynetdicom's own (e.g. user identity): its numbers, not a guess
        reasons.append("association rejected (result {}, source {}, diagnostic {})".format(
            getattr(rejection, "result", "?"), getattr(rejection, "result_source", "?"),
            getattr(rejection, "diagnostic", "?")))
    return "; ".join(reasons)


def called_ae_title(assoc: Association) -> str:
    """The called AE title the peer asked for ("" before its A-ASSOCIATE-RQ arrived)."""
    request = assoc.requestor.primitive
    return str(getattr(request, "called_ae_title", "") or "").strip()
