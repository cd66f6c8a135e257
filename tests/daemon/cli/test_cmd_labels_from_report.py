"""`cxrd labels from-report FILE`: what the report labeller reads in one report, for inspection."""
from __future__ import annotations

import json

import pytest

from daemon.cli import main as cli

REPORT = """EXAM: Chest PA and lateral.
INDICATION: Cough. Rule out pneumonia.
COMPARISON: None.
FINDINGS: The heart size is normal. There is no pleural effusion or pneumothorax.
Possible left basilar atelectasis.
IMPRESSION: No acute cardiopulmonary abnormality. Small hiatal hernia.
"""


@pytest.fixture
def report(tmp_path):
    path = tmp_path / "report.txt"
    path.write_text(REPORT)
    return path


def test_text_names_each_finding_its_status_and_the_deciding_phrase(report, capsys):
    assert cli.main(["labels", "from-report", str(report)]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert 'uncertain  findings: "Possible left basilar atelectasis"' in lines["Atelectasis"]
    assert 'negative   findings: "The heart size is normal"' in lines["Cardiomegaly"]
    assert "negative" in lines["Effusion"] and "negative" in lines["Pneumothorax"]
    assert 'positive   impression: "Small hiatal hernia"' in lines["Hernia"]
    assert lines["Pneumonia"].endswith("not mentioned")  # the INDICATION is not read
    assert len(lines) == 14


def test_json(report, capsys):
    assert cli.main(["labels", "from-report", str(report), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["findings"]["Hernia"] == {"status": "positive", "section": "impression",
                                         "evidence": "Small hiatal hernia"}
    assert out["findings"]["Pneumonia"] is None
    assert len(out["findings"]) == 14


@pytest.mark.parametrize("content, message", [
    (None, "no such report file"),
    (b"", "empty report"),
    (b"  \n\n ", "empty report"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not a text file"),
    (b"\x01\x02\x03\x04\x05\x06\x07\x08" * 10, "not a text file"),
    (b"FINDINGS: " + b"x" * (1 << 20), "give one report per file"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, content, message):
    path = tmp_path / "report.txt"
    if content is not None:
        path.write_bytes(content)
    assert cli.main(["labels", "from-report", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and message in captured.err and "Traceback" not in captured.err


def test_a_directory_is_refused(tmp_path, capsys):
    assert cli.main(["labels", "from-report", str(tmp_path)]) == 2
    assert "not a file" in capsys.readouterr().err


def test_a_windows_encoded_report_is_read(tmp_path, capsys):
    path = tmp_path / "report.txt"
    path.write_bytes("FINDINGS: Small right pleural effusion \u2013 stable.\r\n".encode("cp1252"))
    assert cli.main(["labels", "from-report", str(path)]) == 0
    assert "positive" in [line for line in capsys.readouterr().out.splitlines() if line.startswith("Effusion")][0]
