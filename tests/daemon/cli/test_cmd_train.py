"""`cxrd train` / `cxrd evaluate` end to end on a tiny real subset: register, judge, promote."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon.cli import main as cli

TINY = ["--max-images", "90", "--size", "48", "--views", "2", "--threads", "2", "--quiet", "--n-boot", "20"]


@pytest.fixture()
def cxrd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CXRD_STORAGE__STATE_DIR", str(tmp_path / "state"))

    def run(*argv: str) -> int:
        return cli.main(list(argv))

    assert run("init") == 0
    return run


@pytest.mark.slow
def test_train_registers_promotes_then_judges_the_next_candidate(cxrd, shared_data: Path, capsys, tmp_path: Path) -> None:
    data = str(shared_data / "nih")
    capsys.readouterr()
    assert cxrd("train", "--data", data, "--epochs", "2", *TINY, "--format", "json") == 0
    first = json.loads(capsys.readouterr().out)
    assert first["promoted"] and first["current_version"] is None
    # features are sealed on disk, never plain numpy files
    feats = list(Path(first["work_dir"]).joinpath("features").rglob("*.feat"))
    assert feats and all(b"NUMPY" not in f.read_bytes() for f in feats)

    assert cxrd("train", "--data", data, "--epochs", "1", *TINY, "--promote", "never", "--format", "json") == 0
    second = json.loads(capsys.readouterr().out)
    assert not second["promoted"] and second["current_version"] == first["version"]
    # the current model, re-evaluated on the same held-out patients, scores what training reported
    assert second["current_mean_auroc"] == pytest.approx(first["mean_auroc"], abs=1e-3)

    out = tmp_path / "eval"
    assert cxrd("evaluate", "--data", data, "--split", "val", "--n-boot", "20", "--out", str(out), "--format", "json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == first["version"] and report["n_images"] > 0
    assert report["split"] == "val" and report["split_reason"] == "chosen with --split"
    assert (out / "report.json").is_file() and (out / "roc.png").is_file()

    # by default: the training set is scored on its held-out test patients, and says so ...
    assert cxrd("evaluate", "--data", data, "--n-boot", "0", "--out", str(out)) == 0
    text = capsys.readouterr().out
    assert "(split test: the data set the model was trained on" in text
    # ... another hospital's labelled set on every image, and says how many
    other = tmp_path / "other-hospital"
    other.mkdir()
    rows = (shared_data / "nih" / "Data_Entry_2017.csv").read_text().splitlines()
    (other / "Data_Entry_2017.csv").write_text("\n".join(rows[:61]) + "\n")  # header + 60 images
    (other / "images").symlink_to(shared_data / "nih" / "images")
    assert cxrd("evaluate", "--data", str(other), "--n-boot", "0", "--out", str(out), "--format", "json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["split"] == "all" and report["scored_images"] == report["dataset_images"] == 60
    assert report["n_images"] == 60


def test_evaluate_without_data_is_a_one_line_error(cxrd, tmp_path: Path, capsys) -> None:
    assert cxrd("evaluate", "--data", str(tmp_path)) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("no model" in err[0] or "Data_Entry" in err[0])
