"""De-identification against PS3.15 Table E.1-1 row by row, and on the real radiographs in shared/data."""
from __future__ import annotations

import csv
import io
import json
from datetime import date, datetime, timedelta
from pathlib import Path

import pydicom
import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID_dictionary

from storage import deid
from storage.deid import DeidOptions, deidentify, pseudonymize_uid
from storage.errors import DeidError
from storage.keys import DeidKeys

KEYS = DeidKeys(uid_key=b"\x01" * 32, date_key=b"\x02" * 32)
MARK = "PHIMARK"
SET_BY_PROFILE = {0x00100010, 0x00100020, 0x00120062, 0x00120063, 0x00120064, 0x00280303}
NESTING_SQ = 0x00400260  # Performed Protocol Code Sequence: not in Table E.1-1, kept and recursed


def _table() -> list[dict]:
    return json.loads(deid.TABLE_FILE.read_text())


def _enabled_columns(options: DeidOptions) -> list[str]:
    with open(deid.OPTIONS_FILE, newline="") as f:
        return [r["json_column"] for r in csv.DictReader(f)
                if r["cxrd_supports"] == "yes" and getattr(options, r["deid_options_field"])]


def _sentinel(vr: str, n: int):
    if vr == "SQ":
        item = Dataset()
        item.CodeValue = MARK + "SQ"
        item.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.99.9{n}"
        return Sequence([item])
    return {"AE": "PHIAE", "AS": "042Y", "DA": "20200315", "DT": "20200315101010", "TM": "101010",
            "DS": "12.5", "IS": "42", "PN": MARK + "^X", "UR": "http://phimark.example",
            "UI": f"1.2.826.0.1.3680043.99.{n}", "AT": 0x00100010, "FL": 4.5, "FD": 4.5, "SL": 7, "SS": 7,
            "UL": 7, "US": 7, "SV": 7, "UV": 7}.get(vr, b"PHIMARK\x00" if vr.startswith("O") or vr == "UN"
                                                         else MARK)


def _planted() -> tuple[Dataset, dict[int, tuple[dict, str, object]]]:
    """A dataset carrying a sentinel in every Table E.1-1 attribute pydicom can create."""
    ds = Dataset()
    rows: dict[int, tuple[dict, str, object]] = {}
    for n, row in enumerate(_table()):
        t = row["tag"].strip("()").replace(",", "")
        if "X" in t.upper() or " " in t:
            continue  # wildcard / private rows are tested separately
        tag = int(t, 16)
        if tag >> 16 in (0x0000, 0x0002):
            continue  # command and file meta groups never live in a dataset body
        try:
            vr = dictionary_VR(tag).split(" or ")[0]
        except KeyError:
            continue
        value = _sentinel(vr, n)
        ds.add(DataElement(tag, vr, value))
        rows[tag] = (row, vr, value)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    return ds, rows


def _outcomes(row: dict, vr: str, options: DeidOptions) -> set[str]:
    """What Table E.1-1 allows for this row under these options (independent of storage.deid)."""
    basic = {"X": {"removed"}, "Z": {"empty"}, "D": {"dummy"}, "K": {"kept"}, "U": {"uid"},
             "X/Z": {"removed", "empty"}, "X/D": {"removed", "dummy"}, "Z/D": {"empty", "dummy"},
             "X/Z/D": {"removed", "empty", "dummy"}, "X/Z/U*": {"removed", "empty", "uid"}}[row["basicProfile"]]
    opts = {row.get(c) for c in _enabled_columns(options)} - {None}
    if options.retain_longitudinal_modified_dates and row.get("rtnLongModifDatesOpt") == "C":
        if vr in ("DA", "DT", "TM"):
            return {"shifted"}
    if "K" in opts:
        return {"kept"}
    if vr == "SQ" and "uid" in basic:  # X/Z/U*: the sequence is kept, the UIDs in it replaced
        basic = (basic - {"uid"}) | {"kept"}
    if vr == "UI" and "dummy" in basic:  # a dummy UID is a pseudonym
        basic = basic | {"uid"}
    return basic


def _observed(ds: Dataset, tag: int, vr: str, sentinel, offset: int | None, seconds: int | None) -> str:
    if tag not in ds:
        return "removed"
    value = ds[tag].value
    if vr == "SQ":
        if not value:
            return "empty"
        item = value[0]
        assert str(item.ReferencedSOPInstanceUID).startswith("2.25."), "UIDs in items are always replaced"
        return "kept" if item.get("CodeValue") == MARK + "SQ" else "dummy"
    if value in (None, "", b"", []):
        return "empty"
    if vr == "UI":
        return "uid" if str(value).startswith("2.25.") and value != sentinel else \
            ("kept" if value == sentinel else "dummy")
    if value == sentinel or str(value) == str(sentinel):
        return "kept"
    if vr in ("DA", "DT", "TM") and offset is not None:
        # the sentinels are one instant, 2020-03-15 10:10:10; a date moves by whole days, or with
        # its time partner by days + seconds (so possibly one day later)
        moved = datetime(2020, 3, 15, 10, 10, 10) + timedelta(days=offset, seconds=seconds)
        day_only = (date(2020, 3, 15) + timedelta(days=offset)).strftime("%Y%m%d")
        expected = {"DA": {day_only, moved.strftime("%Y%m%d")}, "DT": {moved.strftime("%Y%m%d%H%M%S")},
                    "TM": {moved.strftime("%H%M%S")}}[vr]
        if str(value) in expected:
            return "shifted"
    return "dummy"


@pytest.mark.parametrize("options", [DeidOptions(), DeidOptions(retain_longitudinal_modified_dates=False,
                                                                retain_patient_characteristics=False)],
                         ids=["defaults", "no-options"])
def test_every_table_row_gets_its_action_code_at_top_level_and_in_sequences(options):
    ds, rows = _planted()
    assert len(rows) > 580, "pydicom should be able to create nearly every row of Table E.1-1"
    inner, _ = _planted()
    ds.add(DataElement(NESTING_SQ, "SQ", Sequence([inner])))
    ds.add(DataElement(0x00081140, "SQ", Sequence([_planted()[0]])))  # X/Z/U*: items kept and cleaned
    result = deidentify(ds, KEYS, options)
    out = result.dataset
    failures = []
    for where, target in (("top", out), ("nested", out[NESTING_SQ].value[0])):
        for tag, (row, vr, sentinel) in rows.items():
            if where == "top" and tag in SET_BY_PROFILE:
                continue
            if where == "top" and tag == 0x00081140:
                continue  # replaced by the planted X/Z/U* sequence above
            got = _observed(target, tag, vr, sentinel, result.date_offset_days, result.time_offset_seconds)
            allowed = _outcomes(row, vr, options)
            if got not in allowed:
                failures.append(f"{where} {row['tag']} {row['name']} [{row['basicProfile']}] got {got}, "
                                f"allowed {sorted(allowed)}")
    assert not failures, "\n".join(failures[:40])


def test_table_is_the_pinned_edition_with_all_rows_and_codes():
    rows = _table()
    assert deid.PROFILE_EDITION == "2024e"
    assert len(rows) == 621
    codes = {r["basicProfile"] for r in rows}
    assert {"X", "Z", "D", "U", "X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*"} <= codes
    assert codes <= {"X", "Z", "D", "K", "C", "U", "X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*"}
    exact, wild = deid.resolved_actions(DeidOptions())
    assert len(exact) + len(wild) == 620  # + the private-attributes row


def test_wildcard_curve_and_overlay_rows_and_private_tags_are_removed():
    ds = Dataset()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = "1.2.3.1", "1.2.3.2", "1.2.3.3"
    ds.add_new(0x50000010, "US", 3)          # (50xx,xxxx) curve data
    ds.add_new(0x50020030, "SH", MARK)
    ds.add_new(0x60004000, "LT", MARK)       # (60xx,4000) overlay comments
    ds.add_new(0x60023000, "OW", b"\x01\x02")  # (60xx,3000) overlay data
    ds.add_new(0x60000010, "US", 512)        # rows of an overlay without data: not in the table, kept
    ds.add_new(0x60020010, "US", 512)        # rows of the overlay whose data goes: the group goes
    ds.add_new(0x00090010, "LO", "ACME")     # private creator
    ds.add_new(0x00091001, "LO", MARK)       # private element
    item = Dataset()
    item.add_new(0x00290010, "LO", "ACME")
    item.add_new(0x00291001, "LO", MARK)
    item.CodeValue = "X1"
    ds.add_new(NESTING_SQ, "SQ", Sequence([item]))
    out = deidentify(ds, KEYS).dataset
    for tag in (0x50000010, 0x50020030, 0x60004000, 0x60023000, 0x60020010, 0x00090010, 0x00091001):
        assert tag not in out
    assert 0x60000010 in out
    assert 0x00291001 not in out[NESTING_SQ].value[0] and out[NESTING_SQ].value[0].CodeValue == "X1"


def _minimal(study="1.2.3.4.100", series="1.2.3.4.200", sop="1.2.3.4.300", pid="PID-1", date_="20210610"):
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
    ds.FrameOfReferenceUID = "1.2.3.4.999"
    ds.PatientID, ds.PatientName, ds.StudyDate, ds.AccessionNumber = pid, "DOE^JANE", date_, "ACC123"
    ds.AcquisitionDateTime = date_ + "083000.5+0100"
    ds.StudyTime = "083000"
    return ds


def test_uids_are_deterministic_keyed_and_referentially_consistent():
    first = _minimal()
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ref.ReferencedSOPInstanceUID = "1.2.3.4.300"
    first.SourceImageSequence = Sequence([ref])
    r1 = deidentify(first, KEYS)
    r2 = deidentify(_minimal(sop="1.2.3.4.301"), KEYS)
    assert r1.study_uid == r2.study_uid == r1.dataset.StudyInstanceUID
    assert r1.sop_instance_uid != r2.sop_instance_uid
    assert r1.dataset.file_meta.MediaStorageSOPInstanceUID == r1.sop_instance_uid == r1.dataset.SOPInstanceUID
    item = r1.dataset.SourceImageSequence[0]
    assert item.ReferencedSOPInstanceUID == r1.sop_instance_uid          # same pseudonym as the SOP UID
    assert item.ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.1"      # well-known: kept
    assert r1.dataset.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1"
    assert r1.dataset.FrameOfReferenceUID == r2.dataset.FrameOfReferenceUID != "1.2.3.4.999"
    for uid in (r1.study_uid, r1.series_uid, r1.sop_instance_uid):
        assert uid.startswith("2.25.") and len(uid) <= 64 and uid[5:].isdigit()
    assert pseudonymize_uid(b"\x09" * 32, "1.2.3.4.100") != r1.study_uid  # keyed
    assert pseudonymize_uid(KEYS.uid_key, "1.2.3.4.100\x00") == r1.study_uid  # padding ignored
    ts = "1.2.840.10008.1.2.4.50"
    assert ts in UID_dictionary and pseudonymize_uid(KEYS.uid_key, ts) == ts


def test_dates_and_times_move_by_one_offset_per_patient():
    a = deidentify(_minimal(pid="P-A", date_="20210610"), KEYS, DeidOptions(max_date_shift_days=30))
    b = deidentify(_minimal(pid="P-A", date_="20220101", sop="9.9"), KEYS, DeidOptions(max_date_shift_days=30))
    c = deidentify(_minimal(pid="P-B", sop="9.8"), KEYS, DeidOptions(max_date_shift_days=30))
    assert a.date_offset_days == b.date_offset_days and -30 <= a.date_offset_days <= -1
    assert a.time_offset_seconds == b.time_offset_seconds and 1 <= a.time_offset_seconds <= 86399
    off, sec = a.date_offset_days, a.time_offset_seconds
    moved = datetime(2021, 6, 10, 8, 30, 0) + timedelta(days=off, seconds=sec)
    # StudyDate/StudyTime are one instant: they move together, the date carrying past midnight
    assert a.dataset.StudyDate == moved.strftime("%Y%m%d")
    assert a.dataset.StudyTime == moved.strftime("%H%M%S") != "083000"
    # a DT moves by the same amount; its fraction and UTC offset are kept
    assert a.dataset.AcquisitionDateTime == moved.strftime("%Y%m%d%H%M%S") + ".5+0100"
    assert a.dataset.LongitudinalTemporalInformationModified == "MODIFIED"
    assert a.dataset.PatientID == b.dataset.PatientID != c.dataset.PatientID
    assert a.dataset.PatientID.startswith("CXRD") and "P-A" not in str(a.dataset.PatientName)
    assert c.date_offset_days is not None and c.time_offset_seconds is not None
    assert (c.date_offset_days, c.time_offset_seconds) != (off, sec)
    removed = deidentify(_minimal(), KEYS, DeidOptions(retain_longitudinal_modified_dates=False))
    assert removed.dataset.LongitudinalTemporalInformationModified == "REMOVED"
    assert not removed.dataset.StudyDate and removed.date_offset_days is None
    assert "StudyTime" not in removed.dataset or not removed.dataset.StudyTime


def test_intervals_within_a_study_are_exact_and_precision_is_kept():
    ds = _minimal(pid="P-I", date_="20211231")
    ds.StudyTime = "235930"                          # 23:59:30 on the 31st
    ds.SeriesDate, ds.SeriesTime = "20220101", "000115.25"   # 1 min 45 s later, after midnight
    ds.ContentDate, ds.ContentTime = "20211231", "2359"      # minute precision stays minute precision
    ds.TimeOfLastCalibration = "0715"                # partner DateOfLastCalibration absent: rotated
    ds.AcquisitionTime = "12:00"                     # not a DICOM TM: cannot be shifted, emptied
    r = deidentify(ds, KEYS)
    out, sec = r.dataset, r.time_offset_seconds

    def instant(da: str, tm: str) -> datetime:
        return datetime.strptime(da + tm[:6], "%Y%m%d%H%M%S")
    study = instant(out.StudyDate, out.StudyTime)
    series = instant(out.SeriesDate, out.SeriesTime)
    assert (series - study).total_seconds() == 105
    assert out.SeriesTime.endswith(".25") and len(out.ContentTime) == 4
    real = datetime(2021, 12, 31, 23, 59, 30)
    assert study == real + timedelta(days=r.date_offset_days, seconds=sec)
    content = datetime.strptime(out.ContentDate + out.ContentTime, "%Y%m%d%H%M")
    # a minute-precision value is truncated after the shift: its interval to the study is what it
    # was (30 s as read) to within one unit of its precision
    assert timedelta(0) <= (study - content) - timedelta(seconds=30) < timedelta(minutes=1)
    rotated = (7 * 3600 + 15 * 60 + sec) % 86400
    assert out.TimeOfLastCalibration == f"{rotated // 3600:02d}{rotated % 3600 // 60:02d}"
    assert not out.AcquisitionTime


def test_deidentification_attributes_and_options_codes():
    ds = _minimal()
    ds.PatientAge, ds.PatientSex, ds.PatientWeight = "061Y", "F", "70"
    ds.StationName, ds.DeviceSerialNumber, ds.DateOfLastCalibration = "XR-ROOM-3", "SN123", "20200101"
    ds.BurnedInAnnotation = "NO"  # identity is claimed removed only for such images (test below)
    r = deidentify(ds, KEYS)
    out = r.dataset
    assert out.PatientIdentityRemoved == "YES"
    codes = [(i.CodeValue, i.CodingSchemeDesignator) for i in out.DeidentificationMethodCodeSequence]
    assert codes == [("113100", "DCM"), ("113107", "DCM"), ("113108", "DCM")]
    assert "2024e" in out.DeidentificationMethod[0]
    assert (out.PatientAge, out.PatientSex, out.PatientWeight) == ("061Y", "F", 70)
    assert out.StationName != "XR-ROOM-3" and "DeviceSerialNumber" not in out or out.DeviceSerialNumber != "SN123"
    assert out.preamble == bytes(128)
    dev = deidentify(ds_ := _minimal(), KEYS, DeidOptions(retain_device_identity=True,
                                                          retain_patient_characteristics=False))
    del ds_
    assert [i.CodeValue for i in dev.dataset.DeidentificationMethodCodeSequence] == ["113100", "113107", "113109"]
    ds = _minimal()
    ds.StationName, ds.DeviceSerialNumber, ds.DateOfLastCalibration, ds.PatientAge = "XR-3", "SN1", "20200101", "061Y"
    dev = deidentify(ds, KEYS, DeidOptions(retain_device_identity=True, retain_patient_characteristics=False))
    assert dev.dataset.StationName == "XR-3" and dev.dataset.DeviceSerialNumber == "SN1"
    assert dev.dataset.DateOfLastCalibration != "20200101"  # device identity never keeps real dates
    assert "PatientAge" not in dev.dataset


def test_originals_are_returned_for_the_reid_map():
    ds = _minimal()
    ds.IssuerOfPatientID = "HOSP"
    r = deidentify(ds, KEYS)
    assert r.original == {"study_uid": "1.2.3.4.100", "series_uid": "1.2.3.4.200",
                          "sop_instance_uid": "1.2.3.4.300", "accession_number": "ACC123",
                          "patient_id": "PID-1", "patient_name": "DOE^JANE", "study_date": "20210610",
                          "issuer_of_patient_id": "HOSP"}
    assert "IssuerOfPatientID" not in r.dataset and not r.dataset.AccessionNumber


@pytest.mark.parametrize("value,expected", [("YES", "yes"), ("NO", "no"), (None, "unknown")])
def test_burned_in_annotation_is_reported(value, expected):
    ds = _minimal()
    if value:
        ds.BurnedInAnnotation = value
    assert deidentify(ds, KEYS).burned_in == expected


def test_missing_sop_instance_uid_is_a_clear_error():
    ds = _minimal()
    del ds.SOPInstanceUID
    with pytest.raises(DeidError, match="sop instance uid"):
        deidentify(ds, KEYS)


def _dicom_files(shared_data: Path) -> list[Path]:
    files = sorted((shared_data / "dicom").rglob("*.dcm"))
    assert len(files) >= 10
    return files


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # a test file has a bad UID; never echo values
def test_real_radiographs_in_every_transfer_syntax_leave_no_identifier(shared_data):
    for path in _dicom_files(shared_data):
        ds = pydicom.dcmread(path, force=True)
        olds = {str(ds.get(k, "")) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                                             "PatientID", "AccessionNumber", "InstitutionName")} - {""}
        name = str(ds.get("PatientName", "")).strip()
        olds -= {str(ds.get("Manufacturer", ""))}  # not identifying, kept by the profile (a test file reuses it)
        pixels = ds.get("PixelData")
        result = deidentify(ds, KEYS)
        buf = io.BytesIO()
        result.dataset.save_as(buf, enforce_file_format=True)
        raw = buf.getvalue()
        assert raw[128:132] == b"DICM" and raw[:128] == bytes(128), path.name
        for value in {v for v in olds | {name} if len(v) >= 6}:  # short ones match pixel bytes by chance
            assert value.encode() not in raw, f"{path.name}: an original identifier survived"
        back = pydicom.dcmread(io.BytesIO(raw))
        assert back.SOPInstanceUID == result.sop_instance_uid
        assert back.file_meta.TransferSyntaxUID == result.dataset.file_meta.TransferSyntaxUID
        assert back.PixelData[: len(pixels)] == pixels, f"{path.name}: pixels must be untouched (odd length gets one pad byte)"


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_real_radiographs_keep_no_real_date_or_time_of_day(shared_data):
    """Distinctive dates and times planted in every real file appear nowhere in the de-identified bytes."""
    planted = {"StudyDate": "20190423", "StudyTime": "134527.918273", "SeriesDate": "20190423",
               "SeriesTime": "134531", "AcquisitionDateTime": "20190423134533.5", "ContentTime": "134539",
               "TimeOfLastCalibration": "064211", "InstanceCreationTime": "134541"}
    needles = [b"20190423", b"134527", b"134531", b"134533", b"134539", b"064211", b"134541"]
    for path in _dicom_files(shared_data):
        ds = pydicom.dcmread(path, force=True)
        for keyword, value in planted.items():
            setattr(ds, keyword, value)
        # read back as received: raw elements, without a VR in implicit VR files
        written = io.BytesIO()
        ds.save_as(written)
        ds = pydicom.dcmread(io.BytesIO(written.getvalue()), force=True)
        result = deidentify(ds, KEYS)
        buf = io.BytesIO()
        result.dataset.save_as(buf, enforce_file_format=True)
        raw = buf.getvalue()
        for needle in needles:
            assert needle not in raw, f"{path.name}: a real date or time of day survived"
        out = result.dataset
        study = datetime.strptime(out.StudyDate + out.StudyTime[:6], "%Y%m%d%H%M%S")
        series = datetime.strptime(out.SeriesDate + out.SeriesTime, "%Y%m%d%H%M%S")
        assert (series - study).total_seconds() == 4, f"{path.name}: intervals within a study are kept"
        moved = datetime(2019, 4, 23, 13, 45, 27) + timedelta(days=result.date_offset_days,
                                                              seconds=result.time_offset_seconds)
        assert study == moved, f"{path.name}: a date and its time move as one instant"
        assert out.StudyTime.endswith(".918273")


def test_compressed_pixels_without_transfer_syntax_are_refused(shared_data):
    ds = pydicom.dcmread(shared_data / "dicom" / "derived" / "nih_00000001_000_rle-lossless.dcm")
    del ds.file_meta
    with pytest.raises(DeidError, match="transfer syntax"):
        deidentify(ds, KEYS)


def _with_raw_body(ds: Dataset, body: bytes) -> Dataset:
    """`ds` plus elements decoded from explicit VR LE bytes, as they arrive from a peer (raw, lazily)."""
    from pydicom.filereader import read_dataset
    extra = read_dataset(io.BytesIO(body), is_implicit_VR=False, is_little_endian=True)
    for tag in extra.keys():
        ds[tag] = extra.get_item(tag)
    return ds


def _un_sequence(tag: int, item: Dataset) -> bytes:
    """A sequence sent as UN: its item encoded in implicit VR, the element's VR given as UN."""
    import struct
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, True
    write_dataset(buf, item)
    value = struct.pack("<HHL", 0xFFFE, 0xE000, len(buf.getvalue())) + buf.getvalue()
    return struct.pack("<HH", tag >> 16, tag & 0xFFFF) + b"UN\x00\x00" + struct.pack("<L", len(value)) + value


def test_a_patient_name_hidden_in_a_un_sequence_is_cleaned():
    item = Dataset()
    item.CodeValue, item.PatientName, item.ReferencedSOPInstanceUID = "X1", MARK + "^NESTED", "1.2.3.4.777"
    ds = _with_raw_body(_minimal(), _un_sequence(NESTING_SQ, item))
    assert ds.get_item(NESTING_SQ).VR == "UN"
    out = deidentify(ds, KEYS).dataset
    nested = out[NESTING_SQ].value[0]
    assert MARK not in str(nested.get("PatientName", ""))
    assert nested.ReferencedSOPInstanceUID == pseudonymize_uid(KEYS.uid_key, "1.2.3.4.777")


def test_unknown_retired_command_and_meta_elements_in_the_body_are_removed():
    import struct
    unknown = struct.pack("<HH", 0x0010, 0x1234) + b"LO" + struct.pack("<H", 8) + MARK.encode() + b" "
    ds = _with_raw_body(_minimal(), unknown)
    ds.add(DataElement(0x00080010, "SH", MARK))         # Recognition Code: retired, not in the table
    ds.add(DataElement(0x00020016, "AE", "PHIAE"))      # Source Application Entity Title: file meta
    ds.add(DataElement(0x00000902, "LO", MARK))         # Error Comment: command group
    ds.add(DataElement(NESTING_SQ, "SQ", Sequence()))   # known and current, not in the table: kept
    out = deidentify(ds, KEYS).dataset
    for tag in (0x00101234, 0x00080010, 0x00020016, 0x00000902):
        assert tag not in out, hex(tag)
    assert NESTING_SQ in out
    assert MARK not in repr(out) and "PHIAE" not in repr(out)


def test_every_kept_uid_that_is_not_well_known_is_pseudonymised():
    ds = _minimal()
    ds.CodingSchemeUID = "1.2.3.4.555"                          # not in the table, not well known
    ds.RelatedGeneralSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # well known: kept
    out = deidentify(ds, KEYS).dataset
    assert out.CodingSchemeUID == pseudonymize_uid(KEYS.uid_key, "1.2.3.4.555") != "1.2.3.4.555"
    assert out.RelatedGeneralSOPClassUID == "1.2.840.10008.5.1.4.1.1.1.1"


@pytest.mark.parametrize("age,kept", [("091Y", "090Y"), ("090Y", "090Y"), ("104Y", "090Y"), ("089Y", "089Y"),
                                      ("011M", "011M"), ("061Y", "061Y")])
def test_ages_of_ninety_and_over_are_aggregated(age, kept):
    ds = _minimal()
    ds.PatientAge = age
    assert deidentify(ds, KEYS).dataset.PatientAge == kept


@pytest.mark.parametrize("source, removed, method", [
    ("NO", "YES", None),
    ("YES", "NO", "Pixel data not cleaned: burned-in annotation YES"),
    (None, "NO", "Pixel data not cleaned: burned-in annotation not declared"),
], ids=["no", "yes", "absent"])
def test_the_stored_object_claims_identity_removed_only_when_no_annotation_is_burned_in(
        shared_data, source, removed, method):
    """A real radiograph with Burned In Annotation set, or removed: the value is carried as sent (never
    made up), and Patient Identity Removed is YES only when the source says NO (pixels are not cleaned)."""
    ds = pydicom.dcmread(shared_data / "dicom" / "derived" / "nih_00000001_000_explicit-vr-le.dcm")
    if source is None:
        ds.pop("BurnedInAnnotation", None)
    else:
        ds.BurnedInAnnotation = source
    result = deidentify(ds, KEYS)
    buf = io.BytesIO()
    result.dataset.save_as(buf, enforce_file_format=True)
    out = pydicom.dcmread(io.BytesIO(buf.getvalue()), stop_before_pixels=True)
    assert out.PatientIdentityRemoved == removed
    assert out.get("BurnedInAnnotation") == source
    assert result.burned_in == {"NO": "no", "YES": "yes", None: "unknown"}[source]
    extra = [m for m in out.DeidentificationMethod if m.startswith("Pixel data")]
    assert extra == ([] if method is None else [method]) and all(len(m) <= 64 for m in out.DeidentificationMethod)


@pytest.mark.parametrize("policy, refused", [("flag", set()), ("refuse_yes", {"YES"}),
                                             ("refuse", {"YES", None})])
def test_the_burned_in_policy_refuses_what_it_says(shared_data, policy, refused):
    options = DeidOptions(burned_in_annotation=policy)
    for source in ("YES", "NO", None):
        ds = pydicom.dcmread(shared_data / "dicom" / "chest" / "google-nih_dicom_00000001_000.dcm",
                             stop_before_pixels=True)
        if source is not None:
            ds.BurnedInAnnotation = source
        reason = deid.burned_in_refusal(ds, options)
        assert (reason is not None) == (source in refused), (policy, source)
        assert reason is None or policy in reason
    with pytest.raises(DeidError):
        deid.burned_in_refusal(Dataset(), DeidOptions(burned_in_annotation="maybe"))
