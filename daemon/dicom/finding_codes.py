"""The coded concepts of the structured report: the 14 ChestX-ray14 findings and the report's own terms.

Each finding maps to one standard concept (SNOMED CT "SCT", or DICOM "DCM" where the DICOM standard
defines the chest finding itself) with the source the mapping was checked against. Only where no
standard concept could be confirmed does a finding use the private scheme `99CXRD`; the README
table "Finding codes" repeats this table for people and a test keeps the two in step.

What must stay true: one concept per label, never two labels on one concept (a receiving system
that indexes by code would otherwise merge two findings), and the code meaning of a private code
says plainly what the model was trained to call.
"""
from __future__ import annotations

from dataclasses import dataclass

from pydicom.sr.coding import Code

PRIVATE_SCHEME = "99CXRD"
"""Private coding scheme (PS3.16 8.2: a '99' prefix marks a local scheme); declared in the SR's
Coding Scheme Identification Sequence so a reader can tell whose codes they are."""

PS3_16 = "DICOM PS3.16"


@dataclass(frozen=True)
class FindingCode:
    label: str        # the ChestX-ray14 label as cxrd spells it (cxrmodel.labels.LABELS)
    code: Code        # the concept the SR carries
    source: str       # where the mapping was checked, for the README table and reviewers
    note: str = ""    # what a reader should know about the mapping's fit


FINDINGS: tuple[FindingCode, ...] = (
    FindingCode("Atelectasis", Code("46621007", "SCT", "Atelectasis"),
                "SNOMED CT International, concept 46621007 'Atelectasis (disorder)'"),
    FindingCode("Cardiomegaly", Code("287272002", "SCT", "Cardiomegaly"),
                f"{PS3_16} CID 12248 (SCT 287272002 'Cardiomegaly')"),
    FindingCode("Effusion", Code("60046008", "SCT", "Pleural effusion"),
                f"{PS3_16} CID 645, CID 8134 (SCT 60046008 'Pleural effusion')",
                "ChestX-ray14 'Effusion' is pleural effusion"),
    FindingCode("Infiltration", Code("112121", "DCM", "Infiltrate"),
                f"{PS3_16} CID 6104 Abnormal Opacity Finding or Feature (DCM 112121 'Infiltrate')"),
    FindingCode("Mass", Code("4147007", "SCT", "Mass"),
                f"{PS3_16} CID 6104 Abnormal Opacity Finding or Feature (SCT 4147007 'Mass')"),
    FindingCode("Nodule", Code("27925004", "SCT", "Nodule"),
                f"{PS3_16} CID 6104 Abnormal Opacity Finding or Feature (SCT 27925004 'Nodule')"),
    FindingCode("Pneumonia", Code("233604007", "SCT", "Pneumonia"),
                "SNOMED CT International, concept 233604007 'Pneumonia (disorder)'",
                "the model sees an opacity pattern; pneumonia is a clinical diagnosis"),
    FindingCode("Pneumothorax", Code("36118008", "SCT", "Pneumothorax"),
                f"{PS3_16} CID 6105 Abnormal Lucency Finding or Feature (SCT 36118008 'Pneumothorax')"),
    FindingCode("Consolidation", Code("95436008", "SCT", "Lung consolidation"),
                "SNOMED CT International, concept 95436008 'Lung consolidation (disorder)'"),
    FindingCode("Edema", Code("19242006", "SCT", "Pulmonary edema"),
                f"{PS3_16} CID 3700 (SCT 19242006 'Pulmonary edema')",
                "ChestX-ray14 'Edema' is pulmonary edema"),
    FindingCode("Emphysema", Code("87433001", "SCT", "Pulmonary emphysema"),
                "SNOMED CT International, concept 87433001 'Pulmonary emphysema (disorder)'"),
    FindingCode("Fibrosis", Code("51615001", "SCT", "Fibrosis of lung"),
                "SNOMED CT International, concept 51615001 'Fibrosis of lung (disorder)'"),
    FindingCode("Pleural_Thickening", Code("PLEURAL-THICK", PRIVATE_SCHEME, "Pleural thickening"),
                "private: no pleural-thickening concept in DICOM PS3.16 and none confirmed in SNOMED CT "
                "or RadLex for this release",
                "a site terminologist may map it to their SNOMED CT edition"),
    FindingCode("Hernia", Code("84089009", "SCT", "Hiatal hernia"),
                "SNOMED CT International, concept 84089009 'Hiatal hernia (disorder)'",
                "ChestX-ray14 'Hernia' cases are hernias seen through the diaphragm, in practice hiatal"),
)

_BY_LABEL = {f.label: f for f in FINDINGS}


def finding_code(label: str) -> Code:
    """The concept for one of the 14 labels; a label outside the table is a programming error."""
    try:
        return _BY_LABEL[label].code
    except KeyError:
        raise ValueError(f"no code for finding {label!r}") from None


# -- the report's own terms (all from DICOM PS3.16 / DCMR, SNOMED CT and UCUM) ------------------------
IMAGING_MEASUREMENT_REPORT = Code("126000", "DCM", "Imaging Measurement Report")   # CID 7021, TID 1500 root
PLAIN_CHEST_XRAY = Code("399208008", "SCT", "Plain chest X-ray")                   # CID 100 is extensible
PROBABILITY = Code("122157", "DCM", "Probability")
THRESHOLD_VALUE = Code("122411", "DCM", "Threshold Value")                        # the operating point
MAXIMUM = Code("56851009", "SCT", "Maximum")                                      # CID 7464 derivation
PRESENT = Code("52101004", "SCT", "Present")                                      # CID 240
ABSENT = Code("272519000", "SCT", "Absent")                                       # CID 240
COMMENT = Code("121106", "DCM", "Comment")
PROBABILITY_UNIT = Code("{probability}", "UCUM", "probability")                   # UCUM annotation of 1
PROCESSING_EQUIPMENT = Code("109102", "DCM", "Processing Equipment")              # CID 7005
ENGLISH = Code("en-US", "RFC5646", "English (United States)")
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")     # TID 1500 row 12
DEVICE = Code("121007", "DCM", "Device")                                          # CID 270 observer type
