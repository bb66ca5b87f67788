"""Readers for cohorts on disk: lightweight records first, voxels only when a case is loaded.

Layouts:

* HCC: a ``manifest.csv`` with columns ``case_id, ct, pet_fdg, pet_act, liver_mask,
  tumor_mask, grade, split, dose`` (paths relative to the manifest's folder; a path may be a
  NIfTI file or a folder holding one DICOM series; empty when absent).
* BraTS 2019: ``HGG/<id>/<id>_{t1,t1ce,t2,flair,seg}.nii.gz`` and ``LGG/...``.
* BraTS 2020/2021: flat ``<id>/<id>_*.nii.gz`` folders; the grade comes from the ``Grade``
  column of ``name_mapping.csv`` when there is one (else the label is None).

`read_records(task, path)` picks the reader for a task. Problems are `DatasetError`s naming
the case and what to fix.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom

from models.contract import Volume
from models.dicom import volume_from_series
from models.tasks import BRATS, HCC, TaskSpec
from training.data.splits import assign_splits

# The HCC manifest's columns for each modality and mask.
HCC_MODALITY_COLUMNS = {"ct": "ct", "pet_fdg": "pet_fdg", "pet_act": "pet_act"}
HCC_MASK_COLUMNS = {"liver": "liver_mask", "tumor": "tumor_mask"}
_HCC_COLUMNS = {
    "case_id",
    "grade",
    "split",
    "dose",
    *HCC_MODALITY_COLUMNS.values(),
    *HCC_MASK_COLUMNS.values(),
}
BRATS_MODALITIES = ("t1", "t1ce", "t2", "flair")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
# Affines that differ by less than this (mm) describe the same grid (float32 headers round).
GRID_TOLERANCE_MM = 1e-3


class DatasetError(ValueError):
    """A case that cannot be read as described; the message names the case and the problem."""

    def __init__(self, case_id: str, problem: str) -> None:
        super().__init__(f"case {case_id!r}: {problem}")
        self.case_id = case_id
        self.problem = problem


@dataclass(frozen=True)
class CaseRecord:
    """Where a case's files are and what it is labelled; no voxels are read."""

    case_id: str
    task: str
    label: int | None
    split: str | None
    paths: dict[str, Path]
    mask_paths: dict[str, Path] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Case:
    """A loaded case: modalities in their own units and grids, masks on their modality's grid."""

    case_id: str
    volumes: dict[str, Volume]
    masks: dict[str, Volume]
    label: int | None
    split: str | None
    meta: dict[str, Any] = field(default_factory=dict)


def label_of(case_id: str, grade: str, task: TaskSpec) -> int | None:
    """Class index of `grade` (a class name, any case, or its index); empty means unlabelled."""
    grade = grade.strip()
    if not grade:
        return None
    names = [c.lower() for c in task.classes]
    if grade.lower() in names:
        return names.index(grade.lower())
    if grade.isdigit() and int(grade) < len(names):
        return int(grade)
    raise DatasetError(case_id, f"unknown grade {grade!r}; expected one of {list(task.classes)}")


# ---------------------------------------------------------------------------- HCC


def read_hcc_manifest(csv_path: str | Path) -> list[CaseRecord]:
    """Records of an HCC manifest; paths are checked to exist, voxels are not read.

    Raises:
        DatasetError: a missing column or file, an unknown grade, a duplicate case id.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DatasetError(str(csv_path), "manifest not found")
    root = csv_path.parent
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = set(reader.fieldnames or ())
        for needed in ("case_id", "ct"):
            if needed not in columns:
                raise DatasetError(
                    str(csv_path), f"manifest has no {needed!r} column (columns: {sorted(columns)})"
                )
        rows = list(reader)
    records, seen = [], set()
    for row in rows:
        case_id = (row.get("case_id") or "").strip()
        if not case_id or case_id in seen:
            raise DatasetError(case_id or "?", f"empty or duplicate case_id in {csv_path}")
        seen.add(case_id)
        records.append(_hcc_record(row, case_id, root))
    return records


def _hcc_record(row: dict[str, str], case_id: str, root: Path) -> CaseRecord:
    paths = _existing_paths(case_id, row, HCC_MODALITY_COLUMNS, root)
    if "ct" not in paths:
        raise DatasetError(case_id, "no CT path; the ct column is required for every case")
    # Columns beyond the layout's (a generator's notes: field of view, contrast phase) are
    # kept as they are, for reports that break results down by them.
    meta: dict[str, Any] = {
        key: value for key, value in row.items() if key and key not in _HCC_COLUMNS and value
    }
    meta["manifest"] = str(root)
    dose = (row.get("dose") or "").strip()
    if dose:
        meta["dose"] = float(dose)
    return CaseRecord(
        case_id=case_id,
        task=HCC.name,
        label=label_of(case_id, row.get("grade") or "", HCC),
        split=(row.get("split") or "").strip() or None,
        paths=paths,
        mask_paths=_existing_paths(case_id, row, HCC_MASK_COLUMNS, root),
        meta=meta,
    )


def _existing_paths(
    case_id: str, row: dict[str, str], columns: dict[str, str], root: Path
) -> dict[str, Path]:
    paths = {}
    for name, column in columns.items():
        value = (row.get(column) or "").strip()
        if not value:
            continue
        path = Path(value) if Path(value).is_absolute() else root / value
        if not path.exists():
            raise DatasetError(case_id, f"{name} file not found: {path}")
        paths[name] = path
    return paths


# ---------------------------------------------------------------------------- BraTS


def read_brats(root: str | Path, *, split_seed: int = 0) -> list[CaseRecord]:
    """Records of a BraTS 2019 (HGG/LGG folders) or 2020/2021 (flat folders) cohort.

    Cases get a deterministic train/val/test split (70/15/15, stratified by grade, from
    `split_seed`), since BraTS training sets ship without one.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(str(root), "BraTS root folder not found")
    graded = [
        (d, grade) for grade in ("HGG", "LGG") if (root / grade).is_dir() for d in _case_dirs(root / grade)
    ]
    if not graded:
        grades = _name_mapping_grades(root)
        graded = [(d, grades.get(d.name, "")) for d in _case_dirs(root)]
    if not graded:
        raise DatasetError(str(root), "no BraTS case folders (HGG/<id>/ or <id>/ with <id>_t1.nii.gz ...)")
    labels = [label_of(d.name, grade, BRATS) for d, grade in graded]
    splits = assign_splits(["?" if label is None else str(label) for label in labels], split_seed)
    return [
        _brats_record(d, label, split, grade)
        for (d, grade), label, split in zip(graded, labels, splits, strict=True)
    ]


def _case_dirs(folder: Path) -> list[Path]:
    """Sub-folders holding at least one ``<name>_<modality>.nii[.gz]`` file."""
    return sorted(
        d
        for d in folder.iterdir()
        if d.is_dir() and any(_nifti(d, m) is not None for m in (*BRATS_MODALITIES, "seg"))
    )


def _nifti(folder: Path, suffix: str) -> Path | None:
    for ext in NIFTI_SUFFIXES:
        path = folder / f"{folder.name}_{suffix}{ext}"
        if path.is_file():
            return path
    return None


def _name_mapping_grades(root: Path) -> dict[str, str]:
    """Case folder name -> grade from ``name_mapping.csv`` (BraTS 2020), if it has a Grade column."""
    mapping = root / "name_mapping.csv"
    if not mapping.is_file():
        return {}
    with mapping.open(newline="") as f:
        rows = list(csv.DictReader(f))
    grades = {}
    for row in rows:
        grade = (row.get("Grade") or "").strip()
        # Any column may hold the folder name (BraTS_2020_subject_ID in 2020).
        for value in row.values():
            if value and value.strip() and value.strip() != grade:
                grades[value.strip()] = grade
    return grades


def _brats_record(folder: Path, label: int | None, split: str, grade: str) -> CaseRecord:
    paths = {m: p for m in BRATS_MODALITIES if (p := _nifti(folder, m)) is not None}
    if not paths:
        raise DatasetError(folder.name, f"no modality files in {folder}")
    seg = _nifti(folder, "seg")
    return CaseRecord(
        case_id=folder.name,
        task=BRATS.name,
        label=label,
        split=split,
        paths=paths,
        mask_paths={"seg": seg} if seg is not None else {},
        meta={"grade": grade, "folder": str(folder)},
    )


def read_records(task: str, path: str | Path) -> list[CaseRecord]:
    """Records of a cohort: an HCC manifest CSV, or a BraTS root folder."""
    if task == HCC.name:
        return read_hcc_manifest(path)
    if task == BRATS.name:
        return read_brats(path)
    raise ValueError(f"no reader for task {task!r}; known: {[HCC.name, BRATS.name]}")


# ---------------------------------------------------------------------------- loading


def load_volume(path: Path, case_id: str = "?") -> Volume:
    """A NIfTI file or a folder holding one DICOM series, as a float32 `Volume`."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(case_id, f"file not found: {path}")
    if path.is_dir():
        return _load_dicom_series(path, case_id)
    try:
        image: Any = nib.load(str(path))  # a NIfTI image (dataobj, affine)
        return Volume(np.asarray(image.dataobj, dtype=np.float32), image.affine)
    except Exception as exc:
        raise DatasetError(case_id, f"cannot read {path} as NIfTI ({exc})") from exc


def _load_dicom_series(folder: Path, case_id: str) -> Volume:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DatasetError(case_id, f"DICOM folder {folder} is empty")
    datasets = []
    for file in files:
        try:
            datasets.append(pydicom.dcmread(file))
        except Exception as exc:  # pydicom raises many kinds for files it cannot parse
            raise DatasetError(case_id, f"{file} is not a readable DICOM file ({exc})") from None
    try:
        return volume_from_series(datasets)
    except ValueError as exc:
        raise DatasetError(case_id, f"DICOM series in {folder}: {exc}") from exc


def load_case(record: CaseRecord) -> Case:
    """Read a record's modalities and masks; masks must lie on their modality's grid.

    HCC masks belong to the CT; BraTS ``seg`` to the MRI (all four share a grid), and a
    ``brain`` mask (any modality > 0) is derived for BraTS cases.
    """
    volumes = {name: load_volume(path, record.case_id) for name, path in record.paths.items()}
    masks = {}
    for name, path in record.mask_paths.items():
        mask = load_volume(path, record.case_id)
        masks[name] = Volume(np.rint(mask.array).astype(np.uint8), mask.affine)
    reference = "ct" if record.task == HCC.name else next(iter(volumes))
    if record.task == BRATS.name:
        for name, volume in volumes.items():
            _check_same_grid(record.case_id, name, volume, reference, volumes[reference])
        brain = np.zeros(volumes[reference].array.shape, dtype=bool)
        for volume in volumes.values():
            brain |= volume.array > 0
        masks["brain"] = Volume(brain.astype(np.uint8), volumes[reference].affine)
    for name, mask in masks.items():
        _check_same_grid(record.case_id, f"mask {name!r}", mask, reference, volumes[reference])
    return Case(record.case_id, volumes, masks, record.label, record.split, dict(record.meta))


def _check_same_grid(case_id: str, what: str, volume: Volume, ref_name: str, ref: Volume) -> None:
    same_shape = volume.array.shape == ref.array.shape
    if not same_shape or not np.allclose(volume.affine, ref.affine, atol=GRID_TOLERANCE_MM):
        raise DatasetError(
            case_id,
            f"{what} grid (shape {volume.array.shape}, spacing {_fmt(volume.spacing)}, origin "
            f"{_fmt(volume.affine[:3, 3])}) does not match {ref_name!r} (shape {ref.array.shape}, "
            f"spacing {_fmt(ref.spacing)}, origin {_fmt(ref.affine[:3, 3])}); resample it onto the "
            f"{ref_name} grid",
        )


def _fmt(values: Any) -> str:
    return "(" + ", ".join(f"{float(v):.2f}" for v in values) + ")"
