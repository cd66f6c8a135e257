"""De-identification: DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile, edition 2024e.

The profile is data, not code: `storage/data/confidentiality_profile_attributes.json` is the standard's
Table E.1-1 (all 621 rows, Basic Profile column and the option columns) and
`storage/data/deid_options.csv` says which option columns cxrd applies and their CID 7050 codes.
This module only turns action codes into edits, so a new edition is a data change.

How the action codes become one edit (we do not know each IOD's attribute types, so for compound codes
we pick the choice that is conformant whatever the type):
    X remove · Z empty value · D dummy value (sequence: items kept with dummy text, see `_dummy_item`)
    K keep · U replace UID
    X/Z -> Z · X/D, Z/D, X/Z/D -> D · X/Z/U* -> keep the sequence, clean its items (UIDs replaced)
    option K (retain) beats the basic code; option C (clean) of the modified-dates option moves every
    DA, DT and TM value by the patient's keyed offset (see "Dates and times" below); that dates C beats
    a K of another option (retaining device identity must not retain real dates or times).
    C of an option for a non-temporal value cannot be cleaned automatically: the basic code applies.
Private attributes, group lengths and command or file-meta elements found in the body are removed;
sequences are cleaned recursively with the same rules.

Attributes the table does not list are kept only if the DICOM dictionary knows them and has not
retired them: an unknown public tag or a retired one could carry anything, so it goes. A value sent as
UN (implicit VR inside an explicit VR data set) is read by the dictionary's VR first, so a sequence
hidden in UN is cleaned like any other. Every kept UID that is not a well-known one is pseudonymised.
With Retain Patient Characteristics, a Patient's Age of 90 years or more becomes 090Y (the safe
harbour aggregate), since such ages are rare enough to identify.

Dates and times: each patient has two keyed offsets, whole days in [-max_date_shift_days, -1] and
seconds in [1, 86399]. A point in time moves by days*86400 + seconds: a DT value, and a DA value with
its TM partner in the same data set (StudyDate/StudyTime, ContentDate/ContentTime, DateOfX/TimeOfX:
the keyword with Date for Time), move together, so the date carries when the time passes midnight.
A TM value without a date partner is rotated by the seconds modulo one day; a DA value without a
time partner moves by the days only (so such a date can be one day earlier than a partnered date of
the same instant). Every interval between instants of one patient is therefore exact to the second,
except across that one-day ambiguity, and neither the real time of day nor the real date is stored.
Values keep their precision (HHMM stays HHMM, truncated after the shift), fractions and UTC-offset
suffixes are kept; ranges and malformed values cannot be shifted safely and are emptied.

Pixel data is never cleaned (no Clean Pixel Data option). What the stored object claims follows from
the source's Burned In Annotation: it is kept as sent (YES, NO, or absent: never made up), Patient
Identity Removed is YES only when the source says NO, and otherwise NO, with a De-identification
Method entry saying the pixels were not cleaned, because a name burned into the image would survive.
`deid.burned_in_annotation` chooses whether such images are stored so flagged or refused at ingest.

UIDs become `2.25.<128-bit integer of HMAC-SHA256(uid_key, uid)>` (as a version-8 UUID, <= 44 chars):
the same original UID maps to the same pseudonym in every instance, every reference and every restart,
and well-known UIDs (anything in pydicom's UID dictionary: SOP classes, transfer syntaxes, ...) are kept.
Patient ID and Patient's Name become a keyed pseudonym (not blank) so one patient's studies stay
linkable; the date offset is a keyed hash of the original Patient ID.
"""
from __future__ import annotations

import csv
import functools
import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Callable

from pydicom.datadict import dictionary_VR, get_entry, keyword_for_tag, tag_for_keyword
from pydicom.multival import MultiValue
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID_dictionary, ImplicitVRLittleEndian, ExplicitVRLittleEndian

from storage.errors import DeidError
from storage.keys import DeidKeys

DATA_DIR = Path(__file__).with_name("data")
TABLE_FILE = DATA_DIR / "confidentiality_profile_attributes.json"
OPTIONS_FILE = DATA_DIR / "deid_options.csv"
PROFILE_EDITION = "2024e"
BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")

IMPLEMENTATION_VERSION_NAME = "CXRD_0_1"
# De-identification Method entries (LO, at most 64 characters) when Patient Identity Removed is NO
PIXELS_NOT_CLEANED = {"yes": "Pixel data not cleaned: burned-in annotation YES",
                      "unknown": "Pixel data not cleaned: burned-in annotation not declared"}


def _uuid_int(digest: bytes) -> int:
    """First 128 bits of a digest as a version-8 (custom) RFC 9562 UUID integer."""
    b = bytearray(digest[:16])
    b[6] = (b[6] & 0x0F) | 0x80
    b[8] = (b[8] & 0x3F) | 0x80
    return int.from_bytes(b, "big")


IMPLEMENTATION_CLASS_UID = "2.25." + str(_uuid_int(hashlib.sha256(b"cxrd implementation class").digest()))

__all__ = ["DeidOptions", "DeidResult", "DeidKeys", "deidentify", "pseudonymize_uid",
           "patient_pseudonym", "date_offset_days", "time_offset_seconds", "burned_in_refusal",
           "BURNED_IN_POLICIES", "PROFILE_EDITION", "profile_rows", "resolved_actions"]


@dataclass(frozen=True)
class DeidOptions:
    """Which PS3.15 options apply; field names equal the `[deid]` settings keys."""
    retain_patient_characteristics: bool = True
    retain_device_identity: bool = False
    retain_longitudinal_modified_dates: bool = True
    max_date_shift_days: int = 365
    burned_in_annotation: str = "flag"  # flag | refuse_yes | refuse: see `burned_in_refusal`


@dataclass
class DeidResult:
    """What ingest needs: the cleaned dataset, its pseudonyms, and the originals for the reid map."""
    dataset: Dataset
    original: dict[str, str]
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    burned_in: str  # "yes" / "no" / "unknown"
    date_offset_days: int | None
    time_offset_seconds: int | None = None
    applied_codes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class _Option:
    code: str
    meaning: str
    column: str
    field: str
    supported: bool


@functools.lru_cache(maxsize=1)
def profile_rows() -> list[dict[str, Any]]:
    """Table E.1-1 rows as shipped (read once)."""
    with open(TABLE_FILE, encoding="utf-8") as f:
        return json.load(f)


@functools.lru_cache(maxsize=1)
def _options() -> list[_Option]:
    with open(OPTIONS_FILE, encoding="utf-8", newline="") as f:
        return [_Option(r["code"], r["option"], r["json_column"], r["deid_options_field"],
                        r["cxrd_supports"] == "yes") for r in csv.DictReader(f)]


_BASIC_TO_EDIT = {"X": "X", "Z": "Z", "D": "D", "K": "K", "U": "U", "C": "C",
                  "X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "D", "X/Z/U*": "S"}
_DATES_COLUMN = "rtnLongModifDatesOpt"
_TAG_RE = re.compile(r"\(([0-9A-FX]{4}),([0-9A-FX]{4})\)")


@dataclass(frozen=True)
class _Rule:
    edit: str        # X Z D K U S C
    fallback: str    # edit to use when C cannot be applied to the element's VR
    dates_clean: bool


def _enabled(options: DeidOptions) -> list[_Option]:
    return [o for o in _options() if o.supported and o.field and getattr(options, o.field)]


@functools.lru_cache(maxsize=16)
def resolved_actions(options: DeidOptions) -> tuple[dict[int, _Rule], tuple[tuple[int, int, _Rule], ...]]:
    """Exact-tag rules and (mask, value, rule) wildcard rules for one set of options."""
    enabled = _enabled(options)
    exact: dict[int, _Rule] = {}
    wild: list[tuple[int, int, _Rule]] = []
    for row in profile_rows():
        m = _TAG_RE.fullmatch(row["tag"].upper())
        if not m:
            continue  # the "(GGGG,EEEE) WHERE GGGG IS ODD" row: private attributes, removed below
        basic = _BASIC_TO_EDIT.get(row["basicProfile"])
        if basic is None:
            raise DeidError(f"unknown action code {row['basicProfile']!r} in profile table")
        codes = {o.column: row.get(o.column) for o in enabled}
        if codes.get(_DATES_COLUMN) == "C":
            rule = _Rule("C", basic, True)
        elif "K" in codes.values():
            rule = _Rule("K", basic, False)
        elif "C" in codes.values():
            rule = _Rule(basic, basic, False)  # non-temporal clean: not automatable, basic applies
        else:
            rule = _Rule(basic, basic, False)
        hexes = m.group(1) + m.group(2)
        if "X" in hexes:
            mask = int("".join("0" if c == "X" else "F" for c in hexes), 16)
            value = int(hexes.replace("X", "0"), 16)
            wild.append((mask, value, rule))
        else:
            exact[int(hexes, 16)] = rule
    return exact, tuple(wild)


# ------------------------------------------------------------------------------------------ pseudonyms


def _norm_uid(uid: str) -> str:
    return str(uid).strip().rstrip("\x00").strip()


def pseudonymize_uid(key: bytes, uid: str) -> str:
    """`2.25.<int>` from a keyed HMAC of the original; well-known UIDs are returned unchanged."""
    uid = _norm_uid(uid)
    if not uid or uid in UID_dictionary:
        return uid
    digest = hmac.new(key, b"uid\x00" + uid.encode(), hashlib.sha256).digest()
    return "2.25." + str(_uuid_int(digest))


def patient_pseudonym(key: bytes, patient_id: str, issuer: str = "", fallback: str = "") -> str:
    """A stable, non-reversible Patient ID pseudonym (`CXRD` + 24 hex digits).

    Without a Patient ID, `fallback` (the original Study UID) is used so unrelated patients with an
    empty ID are not merged into one pseudonymous patient.
    """
    msg = (b"patient\x00" + issuer.encode() + b"\x00" + patient_id.encode()) if patient_id else \
        (b"no-patient-id\x00" + fallback.encode())
    return "CXRD" + hmac.new(key, msg, hashlib.sha256).hexdigest()[:24].upper()


def date_offset_days(key: bytes, patient_id: str, max_shift_days: int, fallback: str = "") -> int:
    """Per-patient date shift in days, in [-max_shift_days, -1]: always into the past, never zero."""
    if max_shift_days < 1:
        raise DeidError("max_date_shift_days must be at least 1")
    msg = (b"date-offset\x00" + patient_id.encode()) if patient_id else \
        (b"date-offset-no-id\x00" + fallback.encode())
    n = int.from_bytes(hmac.new(key, msg, hashlib.sha256).digest()[:8], "big")
    return -(1 + n % max_shift_days)


def time_offset_seconds(key: bytes, patient_id: str, fallback: str = "") -> int:
    """Per-patient time-of-day shift in seconds, in [1, 86399] (never zero, so a stored time is never the
    real one), keyed independently of the day offset so that knowing one does not give the other."""
    msg = (b"time-offset\x00" + patient_id.encode()) if patient_id else \
        (b"time-offset-no-id\x00" + fallback.encode())
    return 1 + int.from_bytes(hmac.new(key, msg, hashlib.sha256).digest()[:8], "big") % 86399


# ----------------------------------------------------------------------------------------------- edits

_DUMMY: dict[str, Any] = {
    "AE": "ANONYMOUS", "AS": "000Y", "CS": "ANONYMIZED", "DA": "19000101", "DT": "19000101000000",
    "TM": "000000", "DS": "0", "IS": "0", "LO": "ANONYMIZED", "LT": "ANONYMIZED", "PN": "ANONYMIZED",
    "SH": "ANONYMIZED", "ST": "ANONYMIZED", "UC": "ANONYMIZED", "UT": "ANONYMIZED",
    "UR": "urn:cxrd:anonymized", "AT": 0, "FL": 0.0, "FD": 0.0, "SL": 0, "SS": 0, "UL": 0, "US": 0,
    "SV": 0, "UV": 0, "US or SS": 0,
}


def _shift_da(value: str, days: int) -> str:
    v = value.strip()
    if len(v) != 8 or not v.isdigit():
        return ""  # ranges, partial or malformed dates: cannot shift safely, so drop
    try:
        return (date(int(v[:4]), int(v[4:6]), int(v[6:8])) + timedelta(days=days)).strftime("%Y%m%d")
    except ValueError:
        return ""


_TM_RE = re.compile(r"(\d{2})(?:(\d{2})(?:(\d{2})(\.\d{1,6})?)?)?")
_DT_RE = re.compile(r"(\d{8})((?:\d{2}){0,3}(?:\.\d{1,6})?)([+-]\d{4})?")


def _parse_tm(value: str) -> tuple[int, int, str] | None:
    """(seconds since midnight, number of HH/MM/SS components present, fraction) or None if invalid."""
    m = _TM_RE.fullmatch(value.strip())
    if m is None or (m.group(4) and not m.group(3)):
        return None
    hh, mm, ss = int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0)
    if hh > 23 or mm > 59 or ss > 60:
        return None
    parts = 1 + (m.group(2) is not None) + (m.group(3) is not None)
    return hh * 3600 + mm * 60 + min(ss, 59), parts, m.group(4) or ""


def _format_tm(seconds: int, parts: int, fraction: str) -> str:
    """HH[MM[SS[.F]]] at the original precision (a shifted value is truncated, never rounded up)."""
    hh, rest = divmod(seconds % 86400, 3600)
    mm, ss = divmod(rest, 60)
    return f"{hh:02d}{mm:02d}{ss:02d}"[:2 * parts] + (fraction if parts == 3 else "")


def _shift_instant(da: str, tm: str, days: int, seconds: int) -> tuple[str, str]:
    """A date and a time of one instant moved together: (DA, TM), either "" when it cannot be shifted."""
    d = da.strip()
    t = _parse_tm(tm)
    if t is None or len(d) != 8 or not d.isdigit():
        return _shift_da(d, days), _rotate_tm(tm, seconds)
    try:
        moved = datetime(int(d[:4]), int(d[4:6]), int(d[6:8])) + timedelta(days=days, seconds=t[0] + seconds)
    except ValueError:
        return "", _rotate_tm(tm, seconds)
    return moved.strftime("%Y%m%d"), _format_tm(moved.hour * 3600 + moved.minute * 60 + moved.second, t[1], t[2])


def _rotate_tm(value: str, seconds: int) -> str:
    """A time of day without a date: rotated by the patient's seconds modulo one day."""
    t = _parse_tm(value)
    return "" if t is None else _format_tm(t[0] + seconds, t[1], t[2])


def _shift_dt(value: str, days: int, seconds: int = 0) -> str:
    """YYYYMMDD[HH[MM[SS[.F]]]][&ZZXX]: date and time moved together; the UTC offset is kept."""
    m = _DT_RE.fullmatch(value.strip())
    if m is None:
        return ""  # partial (year or month only), ranges or malformed: cannot shift safely, so drop
    day, time_part, zone = m.group(1), m.group(2), m.group(3) or ""
    if not time_part:
        return _shift_da(day, days) + zone if _shift_da(day, days) else ""
    new_day, new_time = _shift_instant(day, time_part, days, seconds)
    return new_day + new_time + zone if new_day and new_time else ""


def _map_values(value: Any, fn: Callable[[str], str]) -> Any:
    if value is None or value == "":
        return value
    if isinstance(value, (list, tuple, MultiValue)):
        return [fn(str(v)) for v in value]
    return fn(str(value))


class _Context:
    """Per-dataset state: rules, keys and the patient's date offset."""

    def __init__(self, exact: dict[int, _Rule], wild: tuple, uid_key: bytes, offset: int | None,
                 seconds: int = 0):
        self.exact, self.wild, self.uid_key, self.offset, self.seconds = exact, wild, uid_key, offset, seconds

    def rule(self, tag: int) -> _Rule | None:
        rule = self.exact.get(tag)
        if rule is None:
            for mask, value, r in self.wild:
                if tag & mask == value:
                    return r
        return rule

    def uid(self, value: Any) -> Any:
        return _map_values(value, lambda u: pseudonymize_uid(self.uid_key, u))


def _vr_of(ds: Dataset, tag: BaseTag) -> str | None:
    """The element's VR; for UN (or none) the dictionary's, which is how pydicom decodes it on access."""
    raw = ds.get_item(tag)
    vr = getattr(raw, "VR", None)
    if vr and vr != "UN":
        return vr
    try:
        return dictionary_VR(tag)
    except KeyError:
        return vr


@functools.lru_cache(maxsize=4096)
def _known_and_current(tag: int) -> bool:
    """In the DICOM dictionary (repeating groups included) and not retired."""
    try:
        return get_entry(tag)[3] != "Retired"
    except KeyError:
        return False


def _time_partner(tag: int) -> int | None:
    """The DA tag of the same instant as a TM tag (StudyTime -> StudyDate, TimeOfX -> DateOfX)."""
    keyword = keyword_for_tag(tag)
    if not keyword or "Time" not in keyword:
        return None
    head, _, tail = keyword.rpartition("Time")
    partner = tag_for_keyword(head + "Date" + tail)
    if partner is None:
        return None
    try:
        return partner if dictionary_VR(partner) == "DA" else None
    except KeyError:
        return None


def _shift_paired_instants(ds: Dataset, ctx: _Context) -> set[int]:
    """Move each DA/TM pair whose two values are cleaned by the dates option as one instant; the tags
    done here are skipped by `_clean`."""
    done: set[int] = set()
    if ctx.offset is None:
        return done
    for tag in list(ds.keys()):
        if _vr_of(ds, tag) != "TM":  # raw elements of implicit VR data sets carry no VR: the dictionary's
            continue
        partner = _time_partner(int(tag))
        if partner is None or partner not in ds:
            continue
        rt, rd = ctx.rule(int(tag)), ctx.rule(partner)
        if not (rt and rd and rt.dates_clean and rd.dates_clean):
            continue
        tm, da = ds[tag], ds[partner]
        if da.VR != "DA" or tm.VR != "TM" or da.VM != 1 or tm.VM != 1:
            continue  # multi-valued or odd pairs: each value is shifted on its own
        da.value, tm.value = _shift_instant(str(da.value), str(tm.value), ctx.offset, ctx.seconds)
        done.update((int(tag), partner))
    return done


def _clean(ds: Dataset, ctx: _Context) -> None:
    dropped_overlays: set[int] = set()
    paired = _shift_paired_instants(ds, ctx)
    for tag in list(ds.keys()):
        if tag in paired:
            continue
        # private attributes (and creators), group lengths, command and file-meta groups in the body
        if tag.group & 1 or tag.element == 0 or tag.group <= 0x0002:
            del ds[tag]
            continue
        rule = ctx.rule(tag)
        if rule is not None and rule.edit == "X" and tag.element == 0x3000 and tag.group & 0xFF00 == 0x6000:
            dropped_overlays.add(tag.group)
        if rule is None:
            _keep_unlisted(ds, tag, ctx)
            continue
        _apply(ds, tag, rule, ctx)
    # Overlay Data (60xx,3000) is removed by the table; the rest of that overlay group would then
    # describe an overlay that is not there, so the whole group goes.
    for tag in [t for t in ds.keys() if t.group in dropped_overlays]:
        del ds[tag]


def _keep_unlisted(ds: Dataset, tag: BaseTag, ctx: _Context) -> None:
    """Not in Table E.1-1: kept if the dictionary knows it and has not retired it, with its sequence
    items cleaned and its UIDs pseudonymised; anything else is removed."""
    if not _known_and_current(tag):
        del ds[tag]
        return
    vr = _vr_of(ds, tag)
    if vr == "SQ":
        for item in ds[tag].value or ():
            _clean(item, ctx)
    elif vr == "UI":
        elem = ds[tag]
        elem.value = ctx.uid(elem.value)


_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "UR"})


def _dummy_item(item: Dataset, ctx: _Context) -> None:
    """D on a sequence: keep its structure but no free text (a Code Meaning can hold a person's name).

    Text values become the VR's dummy, UIDs their pseudonym (well-known ones kept), numbers stay.
    """
    for tag in list(item.keys()):
        elem = item[tag]
        if elem.VR == "SQ":
            for sub in elem.value or ():
                _dummy_item(sub, ctx)
        elif elem.VR == "UI":
            elem.value = ctx.uid(elem.value)
        elif elem.VR in _TEXT_VRS and elem.value not in (None, ""):
            elem.value = _DUMMY[elem.VR]


def _apply(ds: Dataset, tag: BaseTag, rule: _Rule, ctx: _Context) -> None:
    edit = rule.edit
    if edit == "X":
        del ds[tag]
        return
    elem = ds[tag]
    vr = elem.VR
    if edit == "C":
        if vr == "DA" and ctx.offset is not None:
            elem.value = _map_values(elem.value, lambda v: _shift_da(v, ctx.offset))
            return
        if vr == "DT" and ctx.offset is not None:
            elem.value = _map_values(elem.value, lambda v: _shift_dt(v, ctx.offset, ctx.seconds))
            return
        if vr == "TM" and ctx.offset is not None:
            elem.value = _map_values(elem.value, lambda v: _rotate_tm(v, ctx.seconds))
            return
        edit = rule.fallback
        if edit == "X":
            del ds[tag]
            return
    if vr == "SQ":
        if edit == "Z":
            elem.value = Sequence()
        else:  # K, S, U: keep the sequence, clean every item with the same rules
            for item in elem.value or ():
                _clean(item, ctx)
                if edit == "D":
                    _dummy_item(item, ctx)
        return
    if edit == "K":
        return
    if edit == "Z":
        elem.value = None
    elif edit == "U" or (edit == "D" and vr == "UI"):
        elem.value = ctx.uid(elem.value)
    elif edit == "D":
        elem.value = _DUMMY.get(vr, b"\x00\x00")
    elif edit == "S":
        elem.value = ctx.uid(elem.value) if vr == "UI" else elem.value
    else:  # pragma: no cover - table validated in resolved_actions
        raise DeidError(f"unsupported edit {edit}")


# ---------------------------------------------------------------------------------------------- public


def _cap_age(ds: Dataset) -> None:
    """Patient's Age 90 years or more -> 090Y (kept ages are otherwise as sent)."""
    age = ds.get("PatientAge")
    if age and len(str(age)) == 4 and str(age)[3] == "Y" and str(age)[:3].isdigit() and int(str(age)[:3]) >= 90:
        ds.PatientAge = "090Y"


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _burned_in(ds: Dataset) -> str:
    value = _text(ds, "BurnedInAnnotation").upper()
    return {"YES": "yes", "NO": "no"}.get(value, "unknown")


BURNED_IN_POLICIES = ("flag", "refuse_yes", "refuse")


def burned_in_refusal(ds: Dataset, options: DeidOptions) -> str | None:
    """Why `deid.burned_in_annotation` refuses this image (a one-line reason without values), or None.

    flag: never refuse (stored, flagged, Patient Identity Removed NO unless the source says NO);
    refuse_yes: refuse Burned In Annotation YES; refuse: refuse anything but NO (absent included).
    """
    policy = options.burned_in_annotation
    if policy not in BURNED_IN_POLICIES:
        raise DeidError(f"unknown burned_in_annotation policy {policy!r}")
    state = _burned_in(ds)
    if policy == "refuse" and state != "no":
        return f"burned-in annotation {'YES' if state == 'yes' else 'not declared'} (policy refuse)"
    if policy == "refuse_yes" and state == "yes":
        return "burned-in annotation YES (policy refuse_yes)"
    return None


def deidentify(ds: Dataset, keys: DeidKeys, options: DeidOptions = DeidOptions()) -> DeidResult:
    """De-identify `ds` in place (it is also `result.dataset`) and return pseudonyms and originals.

    Raises DeidError (one line, no attribute values) if the dataset lacks the UIDs every stored
    instance needs or cannot be parsed.
    """
    original = {"study_uid": _norm_uid(_text(ds, "StudyInstanceUID")),
                "series_uid": _norm_uid(_text(ds, "SeriesInstanceUID")),
                "sop_instance_uid": _norm_uid(_text(ds, "SOPInstanceUID"))}
    for what, value in original.items():
        if not value:
            raise DeidError(f"dataset has no {what.replace('_', ' ')}; cannot de-identify")
    try:
        return _deidentify(ds, keys, options, original)
    except DeidError:
        raise
    except Exception as exc:  # pydicom value errors etc.: never echo values (they may be PHI)
        raise DeidError(f"cannot de-identify dataset: {type(exc).__name__}") from None


def _deidentify(ds: Dataset, keys: DeidKeys, options: DeidOptions, original: dict[str, str]) -> DeidResult:
    sop_class = _norm_uid(_text(ds, "SOPClassUID"))
    if not sop_class and hasattr(ds, "file_meta"):
        sop_class = _norm_uid(str(ds.file_meta.get("MediaStorageSOPClassUID", "")))
    patient_id = _text(ds, "PatientID")
    issuer = _text(ds, "IssuerOfPatientID")
    original.update(accession_number=_text(ds, "AccessionNumber"), patient_id=patient_id,
                    patient_name=_text(ds, "PatientName"), study_date=_text(ds, "StudyDate"),
                    issuer_of_patient_id=issuer)
    burned_in = _burned_in(ds)
    offset = (date_offset_days(keys.date_key, patient_id, options.max_date_shift_days, original["study_uid"])
              if options.retain_longitudinal_modified_dates else None)
    seconds = (time_offset_seconds(keys.date_key, patient_id, original["study_uid"])
               if offset is not None else None)
    old_meta = getattr(ds, "file_meta", None)
    ts = old_meta.get("TransferSyntaxUID") if old_meta is not None else None
    pixels = ds.get_item(0x7FE00010) if 0x7FE00010 in ds else None
    encapsulated = pixels is not None and (getattr(pixels, "is_undefined_length", False)
                                           or getattr(pixels, "length", 0) == 0xFFFFFFFF)
    if not ts and encapsulated:
        raise DeidError("compressed pixel data without a transfer syntax (pass the file meta)")

    exact, wild = resolved_actions(options)
    _clean(ds, _Context(exact, wild, keys.uid_key, offset, seconds or 0))

    _cap_age(ds)
    pseudo_pid = patient_pseudonym(keys.uid_key, patient_id, issuer, original["study_uid"])
    ds.PatientID = pseudo_pid
    ds.PatientName = "ANON^" + pseudo_pid
    # The attributes are de-identified; the pixels are not cleaned. Identity is claimed removed only
    # when the source itself says no annotation is burned in (see the module docstring).
    ds.PatientIdentityRemoved = "YES" if burned_in == "no" else "NO"
    applied = [BASIC_PROFILE_CODE] + [(o.code, o.meaning) for o in _enabled(options)]
    ds.DeidentificationMethod = [f"DICOM PS3.15 E.1-1 {PROFILE_EDITION} Basic Profile (cxrd)"] + \
        [meaning.removesuffix(" Option")[:64] for _, meaning in applied[1:]] + \
        ([] if burned_in == "no" else [PIXELS_NOT_CLEANED[burned_in]])
    items = []
    for code, meaning in applied:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code, "DCM", meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(items)
    ds.LongitudinalTemporalInformationModified = "MODIFIED" if offset is not None else "REMOVED"

    study, series, sop = (pseudonymize_uid(keys.uid_key, original[k])
                          for k in ("study_uid", "series_uid", "sop_instance_uid"))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ts or (ImplicitVRLittleEndian if ds.original_encoding[0] in (True, None)
                                    else ExplicitVRLittleEndian)
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds.file_meta = meta
    ds.preamble = bytes(128)
    return DeidResult(dataset=ds, original=original, study_uid=study, series_uid=series,
                      sop_instance_uid=sop, sop_class_uid=sop_class, burned_in=burned_in,
                      date_offset_days=offset, time_offset_seconds=seconds,
                      applied_codes=[c for c, _ in applied])
