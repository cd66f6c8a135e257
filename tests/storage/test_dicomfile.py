"""file_parts: the stored bytes are exactly dcmwrite's, for every real file and transfer syntax."""
from __future__ import annotations

import copy
import io

import pydicom
import pytest
from pydicom.filewriter import dcmwrite

from storage.deid import deidentify
from storage.dicomfile import PIXEL_DATA, _header, file_parts
from storage.keys import DeidKeys


def dcmwrite_bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def test_every_shared_file_serialises_byte_for_byte_like_dcmwrite_and_pixels_are_not_copied(shared_data):
    files = sorted((shared_data / "dicom").rglob("*.dcm"))
    assert len(files) >= 8
    passthrough = set()
    for path in files:
        ds = pydicom.dcmread(path, force=True)  # one file is a bare dataset without a Part 10 header
        if "TransferSyntaxUID" not in ds.file_meta:  # as pynetdicom supplies from the presentation context
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
            ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        expected = dcmwrite_bytes(copy.deepcopy(ds))
        before = list(ds.keys())
        parts = file_parts(ds)
        assert b"".join(bytes(p) for p in parts) == expected, path.name
        assert list(ds.keys()) == before  # the dataset is left as it was
        if len(parts) > 1:
            assert parts[2].obj is ds[PIXEL_DATA].value  # a view of the dataset's own bytes
            passthrough.add(str(ds.file_meta.TransferSyntaxUID))
    # native (explicit and implicit VR) and encapsulated syntaxes all took the no-copy path
    assert {"1.2.840.10008.1.2.1", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50"} <= passthrough, passthrough


def test_de_identified_files_take_the_fast_header_and_match_dcmwrite(shared_data):
    """What ingest stores: every shared file, as pynetdicom hands it over, de-identified. The header
    writer (meta group encoded here, raw elements copied) must give dcmwrite's bytes exactly."""
    keys = DeidKeys(uid_key=b"\x01" * 32, date_key=b"\x02" * 32)
    fast = 0
    for path in sorted((shared_data / "dicom").rglob("*.dcm")):
        ds = pydicom.dcmread(path, force=True)
        meta = pydicom.dataset.FileMetaDataset()
        meta.TransferSyntaxUID = ds.file_meta.get("TransferSyntaxUID", pydicom.uid.ImplicitVRLittleEndian)
        ds.file_meta = meta
        ds = deidentify(ds, keys).dataset
        expected = dcmwrite_bytes(copy.deepcopy(ds))
        if len(file_parts(ds)) > 1 and _header(ds) is not None:
            fast += 1
        assert b"".join(bytes(p) for p in file_parts(ds)) == expected, path.name
    assert fast >= 6, fast


@pytest.mark.parametrize("syntax", [pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ImplicitVRLittleEndian])
def test_elements_packed_by_the_header_writer_match_pydicoms_writers(shared_data, syntax):
    """Values of every kind the header packs itself, and some it must leave to pydicom."""
    keys = DeidKeys(uid_key=b"\x01" * 32, date_key=b"\x02" * 32)
    ds = pydicom.dcmread(shared_data / "dicom" / "derived" / "nih_00000001_000_explicit-vr-le.dcm")
    if syntax == pydicom.uid.ImplicitVRLittleEndian:  # as received over an implicit VR context
        ds.file_meta.TransferSyntaxUID = syntax
        ds = pydicom.dcmread(io.BytesIO(dcmwrite_bytes(ds)))
    ds = deidentify(ds, keys).dataset
    ds.ImageType = ["DERIVED", "SECONDARY", "X"]            # CS, multi-valued, odd total
    ds.SeriesDescription = "odd"                            # LO, padded with a space
    ds.ReferencedSOPClassUIDInFile = "1.2.3"                # UI, padded with NUL
    ds.add_new(0x00081150, "UI", ["1.2.3", "1.2.34"])       # UI, multi-valued
    ds.add_new(0x00280009, "AT", [0x00181065])              # AT: left to pydicom
    ds.add_new(0x00280107, "US", 4095)                      # US
    ds.add_new(0x00189219, "SS", -3)                        # SS
    ds.add_new(0x00181164, "DS", ["0.139", "0.139"])        # DS: left to pydicom
    ds.add_new(0x00181150, "IS", "100")                     # IS: left to pydicom
    ds.add_new(0x00189306, "FD", [1.5, -2.25])              # FD, multi-valued
    ds.add_new(0x00189307, "FL", 0.5)                       # FL
    ds.add_new(0x00209128, "UL", 7)                         # UL
    ds.add_new(0x00209157, "UL", [1, 2, 3])                 # UL, multi-valued
    ds.add_new(0x00180015, "CS", "")                        # empty
    ds.add_new(0x00080070, "LO", None)                      # empty
    ds.add_new(0x00081030, "LO", "Thorax ü")                # not ASCII: left to pydicom
    ds.add_new(0x00321060, "LO", "A" * 64)                  # even, no padding
    fast = _header(ds)
    assert fast is not None
    assert b"".join(bytes(p) for p in file_parts(ds)) == dcmwrite_bytes(copy.deepcopy(ds))


def test_the_memoised_method_code_sequence_follows_its_content(shared_data):
    keys = DeidKeys(uid_key=b"\x01" * 32, date_key=b"\x02" * 32)
    path = shared_data / "dicom" / "derived" / "nih_00000001_000_explicit-vr-le.dcm"
    first = deidentify(pydicom.dcmread(path), keys).dataset
    second = deidentify(pydicom.dcmread(path), keys).dataset
    second.DeidentificationMethodCodeSequence[0].CodeMeaning = "Another profile"
    third = deidentify(pydicom.dcmread(path), keys).dataset
    third.DeidentificationMethodCodeSequence[0].add_new(0x00080104, "LO", ["A", "B"])  # unhashable value
    for ds in (first, second, third, first):
        assert b"".join(bytes(p) for p in file_parts(ds)) == dcmwrite_bytes(copy.deepcopy(ds))


def test_header_falls_back_where_it_cannot_match_dcmwrite(shared_data):
    keys = DeidKeys(uid_key=b"\x01" * 32, date_key=b"\x02" * 32)
    ds = pydicom.dcmread(shared_data / "dicom" / "derived" / "nih_00000001_000_explicit-vr-le.dcm")
    ds = deidentify(ds, keys).dataset
    assert _header(ds) is not None
    ds.file_meta.SourceApplicationEntityTitle = "X"  # a meta element it does not encode
    assert _header(ds) is None
    del ds.file_meta.SourceApplicationEntityTitle
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian  # raw elements were read explicit
    assert _header(ds) is None
    assert b"".join(bytes(p) for p in file_parts(ds)) == dcmwrite_bytes(copy.deepcopy(ds))


@pytest.mark.parametrize("case", ["big-endian", "trailing element", "odd length"])
def test_unusual_datasets_fall_back_to_plain_dcmwrite(shared_data, case):
    ds = pydicom.dcmread(shared_data / "dicom" / "derived" / "nih_00000001_000_explicit-vr-le.dcm")
    if case == "big-endian":
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.2"
    elif case == "trailing element":
        ds.add_new(0xFFFCFFFC, "OB", b"\0\0")  # Data Set Trailing Padding after Pixel Data
    else:
        ds.PixelData = ds.PixelData[:-1]
    parts = file_parts(ds)
    assert len(parts) == 1
    assert bytes(parts[0]) == dcmwrite_bytes(copy.deepcopy(ds))


def test_encapsulation_follows_the_transfer_syntax_as_dcmwrite_does(shared_data):
    """dcmwrite encapsulates by the transfer syntax, whatever the element's undefined-length flag says;
    a flag that disagrees takes the plain path, so the bytes still match."""
    ds = pydicom.dcmread(shared_data / "dicom" / "derived" / "nih_00000001_000_jpeg-baseline-q95.dcm")
    ds[PIXEL_DATA].is_undefined_length = False
    parts = file_parts(ds)
    assert len(parts) == 1 and bytes(parts[0]) == dcmwrite_bytes(copy.deepcopy(ds))


def test_an_object_read_back_must_be_the_instance_its_row_names(shared_data):
    """A decrypted object is used only if its SOP Instance UID is the row's (a swapped pointer is not)."""
    from storage.dicomfile import checked_instance
    from storage.errors import TamperError
    src = shared_data / "dicom/derived/nih_00000001_000_explicit-vr-le.dcm"
    data = src.read_bytes()
    sop = str(pydicom.dcmread(src, stop_before_pixels=True).SOPInstanceUID)
    assert checked_instance(data, sop, "obj1") is data
    with pytest.raises(TamperError, match="another instance"):
        checked_instance(data, sop + ".9", "obj1")
    with pytest.raises(TamperError):
        checked_instance(b"not dicom at all", sop, "obj1")


@pytest.mark.parametrize("keyword, value", [("Rows", 70000), ("Columns", -5)])
def test_a_data_set_that_cannot_be_encoded_is_the_senders_error_not_ours(shared_data, keyword, value):
    from storage.dicomfile import UnwritableDataset
    ds = pydicom.dcmread(shared_data / "dicom/derived/nih_00000001_000_explicit-vr-le.dcm")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        setattr(ds, keyword, value)
    with pytest.raises(UnwritableDataset):
        file_parts(ds)
