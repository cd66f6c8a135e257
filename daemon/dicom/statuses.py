"""Every DICOM status cxrd answers with, which outcome of a C-STORE earns which, and which statuses
from a PACS mean that an object cxrd sent was kept.

This is the one place a status number is decided (PS3.4 Annex B, PS3.7 Annex C): the SCP and
ingest name an outcome, never a number. What the numbers promise a sender:
- 0x0000 only once the image is durable (stored, or already stored), or deliberately not kept
  (not a chest radiograph, with `dicom.non_chest = "ignore"`): the PACS may forget it.
- 0xA700 (out of resources) when the condition is ours and passes (disk below the floor, database
  unreachable): the PACS should send again later.
- 0xC2xx (cannot understand / processing failure) for this image as sent: a retry of the same
  bytes fails the same way, except 0xC211, which is our own unexpected error.
"""
from __future__ import annotations

from dataclasses import dataclass

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700          # disk below the floor, database unreachable: retry later
CANNOT_UNDERSTAND = 0xC210         # dataset could not be parsed
PROCESSING_FAILURE = 0xC211        # unexpected error of ours (logged without PHI)
CANNOT_DEIDENTIFY = 0xC220         # required UIDs missing or malformed; burned-in text refused
NOT_A_CHEST_RADIOGRAPH = 0xC230    # only with dicom.non_chest = "reject"

# A PACS's answer to a result object cxrd sent: success, or a warning under which the object was still
# stored (0xB000 coercion of data elements, 0xB006 elements discarded, 0xB007 data set does not match
# the SOP class). Anything else means it was not kept, and the results stage retries.
KEPT_BY_PEER = frozenset({SUCCESS, 0xB000, 0xB006, 0xB007})


@dataclass(frozen=True)
class Outcome:
    """What became of one C-STORE: `label` names it in metrics, `status` is what the sender hears."""
    label: str
    status: int


STORED = Outcome("stored", SUCCESS)
DUPLICATE = Outcome("duplicate", SUCCESS)                # this SOP Instance UID is already stored
IGNORED = Outcome("ignored", SUCCESS)                    # not a chest radiograph, non_chest = "ignore"
REJECTED = Outcome("rejected", NOT_A_CHEST_RADIOGRAPH)   # not a chest radiograph, non_chest = "reject"
REFUSED_DISK = Outcome("refused_disk", OUT_OF_RESOURCES)
REFUSED_DATABASE = Outcome("refused_database", OUT_OF_RESOURCES)
UNPARSEABLE = Outcome("unparseable", CANNOT_UNDERSTAND)
REFUSED_PIXELS = Outcome("refused_pixels", CANNOT_UNDERSTAND)  # over the pixel budget, or a length that lies
REFUSED_SIZE = Outcome("refused_size", CANNOT_UNDERSTAND)      # a deflated data set inflating past the bound
UNDEIDENTIFIABLE = Outcome("failed", CANNOT_DEIDENTIFY)
REFUSED_BURNED_IN = Outcome("refused_burned_in", CANNOT_DEIDENTIFY)  # deid.burned_in_annotation refuses it
FAILED = Outcome("failed", PROCESSING_FAILURE)
