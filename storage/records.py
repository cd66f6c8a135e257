"""Prediction rows that cxrd wrote, told apart from rows edited or written by anyone else.

A report sent to the PACS lands in a patient's record, so what it says must be what the model said
about the image that arrived. Each prediction row carries an HMAC (under a key derived from the
master key for this purpose alone) over the pseudonymous SOP Instance UID it belongs to, the model
version, the label, the probability, the threshold and the call. A row changed in SQL (a probability
edited, a call flipped, a row moved to another instance) or written without the key fails `verify`,
and the results stage then refuses the whole report and audits it.
"""
from __future__ import annotations

import hashlib
import hmac


def _message(sop_instance_uid: str, model_version: str, label: str, probability: float, threshold: float,
             positive: bool) -> bytes:
    # repr of a float round-trips exactly, so the database's value gives back the same text
    return "\x1f".join(("prediction", sop_instance_uid, model_version, label, repr(float(probability)),
                        repr(float(threshold)), "1" if positive else "0")).encode()


def mac(key: bytes, sop_instance_uid: str, model_version: str, label: str, probability: float,
        threshold: float, positive: bool) -> str:
    return hmac.new(key, _message(sop_instance_uid, model_version, label, probability, threshold, positive),
                    hashlib.sha256).hexdigest()


def verify(key: bytes, tag: str, sop_instance_uid: str, model_version: str, label: str, probability: float,
           threshold: float, positive: bool) -> bool:
    """True only for a row cxrd wrote with this key and has not been changed since."""
    expected = mac(key, sop_instance_uid, model_version, label, probability, threshold, positive)
    return bool(tag) and hmac.compare_digest(expected, str(tag))
