"""Reader for ChestX-ray14-format data: `Data_Entry_2017.csv` + an images folder (+ optional lists).

Why a reader of our own: NIH shipped two CSV layouts (2017 with a trailing empty column, v2020
without) whose bracketed headers contain commas, new labeled data arrives in this format in the
retraining inbox, and a bad row must be reported (file and line) rather than silently dropped,
because a silently shrunk training set looks like a healthy one.

The split is by Patient ID so that no patient has images on both sides of an evaluation; when
NIH's `train_val_list.txt` / `test_list.txt` are present they decide the test side.
"""
from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ModelError
from .labels import LABELS

NO_FINDING = "No Finding"
SPLITS = ("train", "val", "test")
_REQUIRED = ("Image Index", "Finding Labels", "Patient ID")


class DatasetError(ModelError):
    """The data folder cannot be used (missing CSV, bad header, or a bad row in strict mode)."""


@dataclass(frozen=True)
class Entry:
    """One labeled image. `findings` is empty for `No Finding`."""

    image: str
    path: Path
    findings: tuple[str, ...]
    patient_id: int
    follow_up: int | None = None
    view_position: str | None = None
    line: int = 0


@dataclass(frozen=True)
class Issue:
    """A row that was not used, with where it is so a person can fix the file."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass(frozen=True)
class BBox:
    image: str
    label: str
    x: float
    y: float
    w: float
    h: float


@dataclass
class Dataset:
    root: Path
    entries: list[Entry]
    issues: list[Issue]
    splits: dict[str, list[Entry]]
    split_source: str  # "lists" (NIH files) or "patient-hash"
    bboxes: list[BBox] = field(default_factory=list)

    def labels(self, split: str | None = None) -> np.ndarray:
        return label_matrix(self.entries if split is None else self.splits[split])


def label_matrix(entries: list[Entry]) -> np.ndarray:
    """(N, 14) float32 multi-hot matrix in `LABELS` order."""
    index = {name: i for i, name in enumerate(LABELS)}
    y = np.zeros((len(entries), len(LABELS)), dtype=np.float32)
    for row, entry in enumerate(entries):
        for name in entry.findings:
            y[row, index[name]] = 1.0
    return y


def _image_index(root: Path) -> dict[str, Path]:
    """Map file name -> path for `images/` and NIH's `images_0NN/images/` folders."""
    found: dict[str, Path] = {}
    folders = [root / "images", *sorted(root.glob("images_*/images")), *sorted(root.glob("images_*"))]
    for folder in folders:
        if folder.is_dir():
            for path in folder.iterdir():
                if path.suffix.lower() == ".png":
                    found.setdefault(path.name, path)
    return found


def read_entries(csv_path: Path, images: dict[str, Path] | None = None) -> tuple[list[Entry], list[Issue]]:
    """Parse the label CSV (both NIH layouts); rows that cannot be used become issues."""
    csv_path = Path(csv_path)
    name = csv_path.name
    if images is None:
        images = _image_index(csv_path.parent)
    known = set(LABELS)
    entries: list[Entry] = []
    issues: list[Issue] = []
    seen: set[str] = set()
    try:
        handle = csv_path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise DatasetError(f"cannot read {name}: {exc.strerror}") from None
    with handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            raise DatasetError(f"{name} is empty") from None
        except csv.Error as exc:
            raise DatasetError(f"{name}:1: {exc}") from None
        header = [h.strip() for h in header]
        while header and header[-1] == "":  # the 2017 layout ends every line with a comma
            header.pop()
        missing = [col for col in _REQUIRED if col not in header]
        if missing:
            raise DatasetError(f"{name}: header lacks column(s) {', '.join(missing)}")
        col = {h: i for i, h in enumerate(header)}
        width = len(header)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                issues.append(Issue(name, reader.line_num, f"unparseable row ({exc})"))
                continue
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) == width + 1 and row[-1].strip() == "":
                row = row[:-1]
            if len(row) != width:
                issues.append(Issue(name, line, f"expected {width} fields, found {len(row)}"))
                continue
            image = row[col["Image Index"]].strip()
            raw = [part.strip() for part in row[col["Finding Labels"]].split("|") if part.strip()]
            unknown = [part for part in raw if part not in known and part != NO_FINDING]
            if not image:
                issues.append(Issue(name, line, "empty Image Index"))
                continue
            if unknown:
                issues.append(Issue(name, line, f"unknown label(s) {', '.join(sorted(set(unknown)))} for {image}"))
                continue
            if not raw:
                issues.append(Issue(name, line, f"no label for {image}"))
                continue
            if NO_FINDING in raw and len(raw) > 1:
                issues.append(Issue(name, line, f"'No Finding' combined with findings for {image}"))
                continue
            try:
                patient = int(row[col["Patient ID"]].strip())
            except ValueError:
                issues.append(Issue(name, line, f"Patient ID is not a number for {image}"))
                continue
            if image in seen:
                issues.append(Issue(name, line, f"duplicate row for {image}"))
                continue
            path = images.get(image)
            if path is None:
                issues.append(Issue(name, line, f"image file {image} not found"))
                continue
            follow = row[col["Follow-up #"]].strip() if "Follow-up #" in col else ""
            view = row[col["View Position"]].strip() if "View Position" in col else ""
            seen.add(image)
            entries.append(
                Entry(
                    image=image,
                    path=path,
                    findings=tuple(sorted(set(raw) - {NO_FINDING}, key=LABELS.index)),
                    patient_id=patient,
                    follow_up=int(follow) if follow.isdigit() else None,
                    view_position=view or None,
                    line=line,
                )
            )
    return entries, issues


def read_bboxes(path: Path) -> tuple[list[BBox], list[Issue]]:
    """`BBox_List_2017.csv`: Image Index, Finding Label, Bbox [x, y, w, h] (+ empty trailing columns)."""
    boxes: list[BBox] = []
    issues: list[Issue] = []
    with Path(path).open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        next(reader, None)
        for row in reader:
            cells = [c.strip() for c in row]
            if not any(cells):
                continue
            try:
                image, label = cells[0], cells[1]
                x, y, w, h = (float(v) for v in cells[2:6])
            except (IndexError, ValueError):
                issues.append(Issue(Path(path).name, reader.line_num, "bad bounding box row"))
                continue
            if label not in LABELS:
                issues.append(Issue(Path(path).name, reader.line_num, f"unknown label {label}"))
                continue
            boxes.append(BBox(image, label, x, y, w, h))
    return boxes, issues


def patient_bucket(patient_id: int, seed: int = 0) -> float:
    """A stable number in [0, 1) per patient: a patient never changes side when new data arrives."""
    digest = hashlib.sha256(f"cxrd-split:{seed}:{patient_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_by_patient(
    entries: list[Entry], val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0
) -> dict[str, list[Entry]]:
    """Deterministic train/val/test split by Patient ID hash (no patient on two sides)."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DatasetError("val and test fractions must be in [0, 1) and sum below 1")
    out: dict[str, list[Entry]] = {name: [] for name in SPLITS}
    for entry in entries:
        u = patient_bucket(entry.patient_id, seed)
        side = "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"
        out[side].append(entry)
    return out


def _read_list(path: Path) -> set[str]:
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def read_dataset(
    root: Path,
    *,
    strict: bool = False,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    csv_name: str = "Data_Entry_2017.csv",
) -> Dataset:
    """Read a ChestX-ray14-format folder and split it; `strict` raises on the first bad row."""
    root = Path(root)
    csv_path = root / csv_name
    if not csv_path.is_file():
        alt = sorted(root.glob("Data_Entry_2017*.csv"))
        if not alt:
            raise DatasetError(f"no {csv_name} in the data folder")
        csv_path = alt[0]
    entries, issues = read_entries(csv_path, _image_index(root))
    bboxes: list[BBox] = []
    if (root / "BBox_List_2017.csv").is_file():
        bboxes, box_issues = read_bboxes(root / "BBox_List_2017.csv")
        issues.extend(box_issues)
    if strict and issues:
        raise DatasetError(f"{len(issues)} bad row(s); first: {issues[0]}")
    if not entries:
        raise DatasetError(f"{csv_path.name} has no usable rows")

    train_list, test_list = root / "train_val_list.txt", root / "test_list.txt"
    if test_list.is_file():
        test_names = _read_list(test_list)
        train_names = _read_list(train_list) if train_list.is_file() else None
        test = [e for e in entries if e.image in test_names]
        rest = [e for e in entries if e.image not in test_names and (train_names is None or e.image in train_names)]
        test_patients = {e.patient_id for e in test}
        leaked = sum(1 for e in rest if e.patient_id in test_patients)
        if leaked:
            issues.append(Issue(test_list.name, 0, f"{leaked} train/val image(s) share a patient with the test list"))
        # validation comes from train_val by patient hash, with the fraction rescaled to that part
        inner = split_by_patient(rest, val_fraction / max(1e-9, 1 - test_fraction), 0.0, seed)
        splits = {"train": inner["train"], "val": inner["val"], "test": test}
        source = "lists"
    else:
        splits = split_by_patient(entries, val_fraction, test_fraction, seed)
        source = "patient-hash"
    return Dataset(root, entries, issues, splits, source, bboxes)
