"""`cxrd status` counts every image a PACS sent, including those not stored: ignored (not a chest
radiograph), rejected (the same with dicom.non_chest = "reject") and refused at receipt (pixel data
that is not what its header declares). None of them leaves an instance row; each leaves an audit row."""
from __future__ import annotations

import json

import pydicom

from conftest import copy_with_new_uids, storescu

CHEST = "dicom/derived/nih_00000001_000_explicit-vr-le.dcm"


def truncated_pixels(src, out):  # noqa: ANN001
    """A chest radiograph whose native pixel data was cut to 60 % of what Rows x Columns declares."""
    ds = pydicom.dcmread(src)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) * 6 // 10 // 2 * 2]
    ds.save_as(out)
    return out


def test_status_counts_ignored_rejected_and_refused_images(daemon_factory, shared_data, tmp_path):
    d = daemon_factory().start()
    nonchest = sorted((shared_data / "dicom/nonchest").glob("*.dcm"))
    for _ in range(2):  # four ignored images, as a PACS forwarding a mixed worklist would send
        assert storescu(d.dicom_port, *nonchest)[1] == ["Success"] * 2
    (chest, damaged) = copy_with_new_uids(shared_data / CHEST, tmp_path / "c", 2)
    assert storescu(d.dicom_port, chest)[1] == ["Success"]
    refused = storescu(d.dicom_port, truncated_pixels(damaged, tmp_path / "truncated.dcm"))[1]
    assert refused and refused != ["Success"]
    assert d.stop() == 0
    rejecting = daemon_factory({"CXRD_DICOM__NON_CHEST": "reject"}, state_dir=d.state_dir).start()
    assert storescu(rejecting.dicom_port, nonchest[0])[1] != ["Success"]
    assert rejecting.stop() == 0

    info = json.loads(d.cli("status", "--format", "json", check=True).stdout)
    assert info["not_stored"] == {"ignored": 4, "rejected": 1, "refused": 1}
    assert info["instances"]["received"] == 1 and "ignored" not in info["instances"]
    table = d.cli("status", check=True).stdout
    assert "not stored      : ignored 4, rejected 1, refused 1" in table
