"""Is this chest radiograph a frontal (PA or AP) view? The documented rule that decides what is analysed.

The ChestX-ray14 model was trained on frontal chest radiographs only; its numbers on a lateral,
decubitus or oblique view mean nothing. Ingest stores every chest radiograph it accepts, and this
rule decides which of them the model sees (README "Which images are analysed"). Every attribute
that states a view is consulted, in this order, and named in the reason:

1. View Code Sequence (0054,0220): codes of DICOM CID 4010 "DX View" (SNOMED CT, and the legacy
   SNOMED-RT codes older equipment still sends), else its Code Meaning read as words;
   a View Modifier Code Sequence (0054,0222) code of CID 4011 (cephalad/caudad angulation,
   transthoracic, cross-table) makes the view "modified";
2. ViewPosition (0018,5101): AP, PA (frontal); LL, RL, LAT, LATERAL (lateral); LLD, RLD (decubitus);
   LLO, RLO and other obliques; a value none of these terms is in states nothing;
3. the descriptions of this image or its series, read as words: SeriesDescription, ProtocolName,
   ImageComments, AcquisitionDeviceProcessingDescription, PerformedProcedureStepDescription.
   A field naming both a frontal and another view ("CHEST PA AND LATERAL", a protocol for the whole
   exam) states nothing. StudyDescription and RequestedProcedureDescription are never read: they
   describe the whole exam, whose other image may be the lateral.

The decision: analysed only if some source states frontal and no source states another view. Any
disagreement (ViewPosition PA but SeriesDescription LAT) is not analysed: a radiologist would
rather have no AI numbers than numbers from a mislabelled lateral. When no source states a view
(common in converted or anonymised archives: the NIH ChestX-ray14 DICOMs carry none), `unknown`
decides: "analyse" (default, recorded as "view not recorded; assumed frontal" so a report can say
so) or "skip".

Not used, and why: ImageLaterality/Laterality (a body side, R/L/U/B, not a projection: the canine
lateral thorax in the shared test data says L), and PatientOrientation (that same lateral says L\\F,
the frontal pattern: devices write a default there).

Reasons are built from this module's words only, never from a copied attribute value: a free-text
field can hold anything, including a name, and reasons are stored and audited in clear.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.dataset import Dataset

FRONTAL, LATERAL, DECUBITUS, OBLIQUE, MODIFIED, OTHER, UNKNOWN, CONFLICTING = (
    "frontal", "lateral", "decubitus", "oblique", "modified", "other", "unknown", "conflicting")
VIEWS = (FRONTAL, LATERAL, DECUBITUS, OBLIQUE, MODIFIED, OTHER, UNKNOWN, CONFLICTING)
UNKNOWN_POLICIES = ("analyse", "skip")

# DICOM PS3.16 CID 4010 "DX View": (scheme, code) -> (view, our name for it). SCT codes and the
# SNOMED-RT codes they replaced (SRT/SNM3), which older equipment still sends; 399066004/R-10214 is
# the postero-anterior code of earlier editions (now 272479007/R-40888).
_CID_4010: dict[str, tuple[str, str]] = {}
for _view, _name, _codes in (
        (FRONTAL, "postero-anterior", ("272479007", "R-40888", "399066004", "R-10214")),
        (FRONTAL, "antero-posterior", ("399348003", "R-10206")),
        (FRONTAL, "frontal", ("399033003", "R-10202")),
        (LATERAL, "lateral", ("399067008", "R-102CD")),
        (LATERAL, "left lateral", ("399173006", "R-10236")),
        (LATERAL, "right lateral", ("399198007", "R-10232")),
        (LATERAL, "sagittal", ("30730003", "G-A145")),
        (LATERAL, "medial-lateral", ("399260004", "R-10224")),
        (LATERAL, "lateral-medial", ("399352003", "R-10228")),
        (OBLIQUE, "frontal oblique", ("399160007", "R-10204")),
        (OBLIQUE, "antero-posterior oblique", ("399312000", "R-10208")),
        (OBLIQUE, "postero-anterior oblique", ("399059000", "R-10216")),
        (OBLIQUE, "right posterior oblique", ("399038007", "R-10210")),
        (OBLIQUE, "left posterior oblique", ("399006002", "R-10212")),
        (OBLIQUE, "right anterior oblique", ("399356000", "R-40985", "R-10218")),
        (OBLIQUE, "left anterior oblique", ("399135007", "R-10220")),
        (OBLIQUE, "lateral oblique", ("260427002", "R-40783")),
        (OBLIQUE, "medial oblique", ("260426006", "R-40782")),
        (OBLIQUE, "right oblique", ("399236003", "R-10234")),
        (OBLIQUE, "left oblique", ("399184004", "R-10238")),
        (OBLIQUE, "oblique", ("399182000", "R-102C1")),
        (OBLIQUE, "latero-medial oblique", ("399099002", "R-10230")),
        (OBLIQUE, "medio-lateral oblique", ("399368009", "R-10226")),
        (OTHER, "axial", ("399061009", "R-10241")),
        (OTHER, "cranio-caudal", ("399162004", "R-10242")),
        (OTHER, "caudo-cranial", ("399196006", "R-10244")),
        (OTHER, "tangential", ("399110001", "R-102C2")),
        (OTHER, "oblique axial", ("399004004", "R-10246")),
        (OTHER, "frontal-oblique axial", ("399132005", "R-10252")),
        (OTHER, "sagittal-oblique axial", ("399325008", "R-10254"))):
    for _code in _codes:
        _CID_4010[_code] = (_view, _name)
# CID 4011 "DX View Modifier": any of these makes a frontal view non-standard (angled, cross-table).
_CID_4011 = {"399196006": "cephalad", "R-10244": "cephalad", "399162004": "caudad", "R-10242": "caudad",
             "272476000": "transthoracic", "R-40885": "transthoracic", "111069": "cross-table"}
_SNOMED = {"SCT", "SRT", "SNM3", "99SDM"}

# ViewPosition defined terms (PS3.3 C.8.11.5, C.8.11.7) and the spellings equipment uses.
_VIEW_POSITION = {
    "PA": (FRONTAL, "PA"), "AP": (FRONTAL, "AP"), "FRONTAL": (FRONTAL, "frontal"),
    "LL": (LATERAL, "LL"), "RL": (LATERAL, "RL"), "LAT": (LATERAL, "lateral"),
    "LATERAL": (LATERAL, "lateral"), "LLAT": (LATERAL, "lateral"), "RLAT": (LATERAL, "lateral"),
    "LLD": (DECUBITUS, "LLD"), "RLD": (DECUBITUS, "RLD"),
    "LLO": (OBLIQUE, "LLO"), "RLO": (OBLIQUE, "RLO"), "LAO": (OBLIQUE, "LAO"), "RAO": (OBLIQUE, "RAO"),
    "LPO": (OBLIQUE, "LPO"), "RPO": (OBLIQUE, "RPO"), "OBL": (OBLIQUE, "oblique"),
    "OBLIQUE": (OBLIQUE, "oblique"),
}

# Words in free text. Order matters only for the name reported: the first match per view is named.
_WORDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (DECUBITUS, re.compile(r"\b(DECUB\w*|LLD|RLD)\b")),
    (OBLIQUE, re.compile(r"\b(OBL|OBLIQUE|LAO|RAO|LPO|RPO|LLO|RLO)\b")),
    (MODIFIED, re.compile(r"\b(LORDOTIC|CROSS[- ]?TABLE)\b")),
    (LATERAL, re.compile(r"\b(LAT|LATERAL|LATERALE|LL|RL|L LAT|R LAT|LLAT|RLAT|PROFIL|SEITLICH)\b")),
    (FRONTAL, re.compile(r"\b(PA|AP|P\.A\.?|A\.P\.?|FRONTAL|FRONTALE|POSTERO-?ANTERIOR|"
                         r"ANTERO-?POSTERIOR|POSTEROANTERIOR|ANTEROPOSTERIOR)\b")),
)
_TEXT_FIELDS = ("SeriesDescription", "ProtocolName", "ImageComments", "AcquisitionDeviceProcessingDescription",
                "PerformedProcedureStepDescription")


@dataclass(frozen=True)
class ViewDecision:
    analyse: bool
    view: str    # one of VIEWS
    reason: str  # one line from this module's vocabulary, safe to store and audit in clear


@dataclass(frozen=True)
class _Statement:
    view: str
    source: str  # "ViewPosition PA", "View Code Sequence (left lateral)", "SeriesDescription"


def decide_view(ds: Dataset, unknown: str = "analyse") -> ViewDecision:
    """Whether the model may see this (already accepted as chest) image, and why."""
    if unknown not in UNKNOWN_POLICIES:
        raise ValueError(f"unknown-view policy must be one of {UNKNOWN_POLICIES}")
    statements = _coded(ds) + _described(ds)
    others = [s for s in statements if s.view != FRONTAL]
    frontal = [s for s in statements if s.view == FRONTAL]
    if frontal and others and all(s.view == MODIFIED for s in others):
        return ViewDecision(False, MODIFIED, f"frontal view with a modifier ({_names(frontal + others)}), not "
                                             "a standard PA or AP; the model is for standard frontal views only")
    if others and frontal:
        return ViewDecision(False, CONFLICTING,
                            f"view attributes disagree ({_names(frontal)} frontal; {_names(others)} "
                            f"{others[0].view}); not analysed")
    if others:
        first = others[0]
        return ViewDecision(False, first.view, f"{first.view} view ({_names(others)}); the model is for "
                                               "frontal views only")
    if frontal:
        return ViewDecision(True, FRONTAL, f"frontal view ({_names(frontal)})")
    if unknown == "analyse":
        return ViewDecision(True, UNKNOWN, "view not recorded (no View Code Sequence, ViewPosition or view "
                                           "words in the descriptions); assumed frontal")
    return ViewDecision(False, UNKNOWN, "view not recorded (no View Code Sequence, ViewPosition or view "
                                        "words in the descriptions); not analysed (dicom.unknown_view = skip)")


def _names(statements: list[_Statement]) -> str:
    return ", ".join(s.source for s in statements)


def _coded(ds: Dataset) -> list[_Statement]:
    out: list[_Statement] = []
    for item in _items(ds, "ViewCodeSequence")[:1]:  # DX, CR and SC allow a single item
        code = _text(item, "CodeValue").strip()
        scheme = _text(item, "CodingSchemeDesignator").strip().upper()
        known = _CID_4010.get(code) if scheme in _SNOMED or not scheme else None
        if known is not None:
            out.append(_Statement(known[0], f"View Code Sequence {known[1]}"))
        else:
            view = _words(_text(item, "CodeMeaning"))
            if view is not None:
                out.append(_Statement(view, "View Code Sequence meaning"))
        for modifier in _items(item, "ViewModifierCodeSequence"):
            name = _CID_4011.get(_text(modifier, "CodeValue").strip())
            if name is not None:
                out.append(_Statement(MODIFIED, f"View Modifier {name}"))
    raw = _text(ds, "ViewPosition").strip().upper()
    if raw:
        known = _VIEW_POSITION.get(re.sub(r"[\s_]+", "", raw))
        if known is None:  # "AP SUPINE", "PA ERECT", "L LAT": the terms among other words
            view = _words(raw)
            known = (view, view) if view is not None else None
        if known is not None:
            out.append(_Statement(known[0], f"ViewPosition {known[1]}"))
    return out


def _described(ds: Dataset) -> list[_Statement]:
    out = []
    for keyword in _TEXT_FIELDS:
        view = _words(_text(ds, keyword))
        if view is not None:
            out.append(_Statement(view, keyword))
    return out


def _words(text: str) -> str | None:
    """The one view a text names; None if it names none, or a frontal and another view together."""
    text = text.upper()
    if not text.strip():
        return None
    found = [view for view, pattern in _WORDS if pattern.search(text)]
    if not found or (FRONTAL in found and len(found) > 1):
        return None
    return found[0]


def _text(ds: Dataset, keyword: str) -> str:
    try:
        return str(ds.get(keyword, "") or "")
    except Exception:  # a value that does not decode states nothing (hostile input never crashes)
        return ""


def _items(ds: Dataset, keyword: str) -> list[Dataset]:
    try:
        seq = ds.get(keyword)
        return list(seq) if seq is not None else []
    except Exception:  # a malformed sequence states nothing (never a crash on hostile input)
        return []
