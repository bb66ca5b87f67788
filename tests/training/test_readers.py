"""Readers: generated cohorts read back exactly, a DICOM series in a manifest, and the errors."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from cohort_shapes import HCC_SHAPE

from models.contract import Volume
from models.dicom import series_from_volume
from training.data.readers import DatasetError, load_case, read_hcc_manifest, read_records
from training.data.synth_hcc import GRADES, generate_hcc_case


def rows_of(manifest: Path) -> list[dict[str, str]]:
    with manifest.open(newline="") as f:
        return list(csv.DictReader(f))


def absolute(rows: list[dict[str, str]], root: Path) -> list[dict[str, str]]:
    """Rows with their paths made absolute, to write them into a manifest elsewhere."""
    keys = ("ct", "pet_fdg", "pet_act", "liver_mask", "tumor_mask")
    return [{k: str(root / v) if k in keys and v else v for k, v in row.items()} for row in rows]


def write_manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_hcc_manifest_round_trip(hcc_manifest: Path) -> None:
    rows = rows_of(hcc_manifest)
    records = read_hcc_manifest(hcc_manifest)
    assert [r.case_id for r in records] == [row["case_id"] for row in rows]
    assert [r.label for r in records] == [GRADES.index(row["grade"]) for row in rows]
    assert [r.split for r in records] == [row["split"] for row in rows]
    assert set(records[0].paths) == {"ct", "pet_fdg", "pet_act"}
    assert set(records[0].mask_paths) == {"liver", "tumor"}

    case = load_case(records[1])
    generated = generate_hcc_case(7, 1, shape=HCC_SHAPE)
    np.testing.assert_array_equal(case.volumes["ct"].array, np.rint(generated.volumes["ct"]))
    np.testing.assert_allclose(case.volumes["pet_fdg"].array, generated.volumes["pet_fdg"])
    np.testing.assert_allclose(case.volumes["pet_act"].affine, generated.affines["pet_act"], atol=1e-4)
    np.testing.assert_array_equal(case.masks["tumor"].array, generated.masks["tumor"])
    assert case.label == generated.label and case.masks["liver"].array.dtype == np.uint8


def test_dicom_series_in_shuffled_file_order_reads_back(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    hu = rng.integers(-1000, 1500, size=(12, 10, 7)).astype(np.float32)
    affine = np.array([[0.8, 0, 0, -40.0], [0, 0.9, 0, 12.0], [0, 0, 2.5, -300.0], [0, 0, 0, 1]])
    series = series_from_volume(Volume(hu, affine), rescale_slope=0.5, rescale_intercept=-1024.0)
    folder = tmp_path / "case1" / "ct"
    folder.mkdir(parents=True)
    # File names in a shuffled order, so neither names nor write order give the slice order.
    for name, ds in zip(rng.permutation(len(series)), series, strict=True):
        pydicom.dcmwrite(folder / f"IM{name:03d}.dcm", ds, enforce_file_format=True)
    manifest = write_manifest(
        tmp_path / "manifest.csv", [{"case_id": "case1", "ct": "case1/ct", "grade": "poor"}]
    )

    case = load_case(read_hcc_manifest(manifest)[0])
    np.testing.assert_array_equal(case.volumes["ct"].array, hu)
    np.testing.assert_allclose(case.volumes["ct"].affine, affine, atol=1e-4)
    assert case.label == 2


def test_missing_file_names_case_and_path(hcc_manifest: Path, tmp_path: Path) -> None:
    rows = rows_of(hcc_manifest)[:1]
    rows[0]["ct"] = str(hcc_manifest.parent / "nowhere" / "ct.nii.gz")
    manifest = write_manifest(tmp_path / "m.csv", rows)
    with pytest.raises(DatasetError, match=r"case 'hcc0000': ct file not found: .*nowhere"):
        read_hcc_manifest(manifest)


def test_unknown_grade(hcc_manifest: Path, tmp_path: Path) -> None:
    rows = absolute(rows_of(hcc_manifest)[:1], hcc_manifest.parent)
    rows[0]["grade"] = "IV"
    manifest = write_manifest(tmp_path / "m.csv", rows)
    with pytest.raises(DatasetError, match=r"case 'hcc0000': unknown grade 'IV'; expected one of"):
        read_hcc_manifest(manifest)


def test_empty_grade_is_unlabelled(hcc_manifest: Path, tmp_path: Path) -> None:
    rows = absolute(rows_of(hcc_manifest)[:1], hcc_manifest.parent)
    rows[0]["grade"] = ""
    assert read_hcc_manifest(write_manifest(tmp_path / "m.csv", rows))[0].label is None


def test_mask_on_another_grid(hcc_manifest: Path, tmp_path: Path) -> None:
    rows = absolute(rows_of(hcc_manifest)[:1], hcc_manifest.parent)
    tumor = nib.load(rows[0]["tumor_mask"])
    shifted = tmp_path / "tumor.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(tumor.dataobj)[:-1], tumor.affine), str(shifted))
    rows[0]["tumor_mask"] = str(shifted)
    record = read_hcc_manifest(write_manifest(tmp_path / "m.csv", rows))[0]
    with pytest.raises(
        DatasetError, match=r"case 'hcc0000': mask 'tumor' grid \(shape \(47, 48, 24\).*does not match 'ct'"
    ):
        load_case(record)


def test_brats_2019_layout(brats_root: Path) -> None:
    records = read_records("brats", brats_root)
    grades = {r.case_id: r.label for r in records}
    assert len(records) == 12
    for grade, label in (("HGG", 1), ("LGG", 0)):
        for folder in (brats_root / grade).iterdir():
            assert grades[folder.name] == label
    case = load_case(records[0])
    assert set(case.volumes) == {"t1", "t1ce", "t2", "flair"} and set(case.masks) == {"seg", "brain"}
    written = nib.load(str(records[0].mask_paths["seg"]))
    np.testing.assert_array_equal(case.masks["seg"].array, np.asarray(written.dataobj))
    assert {r.split for r in records} <= {"train", "val", "test"}


def test_brats_2020_and_2021_flat_layouts(brats_root: Path, tmp_path: Path) -> None:
    flat = tmp_path / "brats20"
    mapping = [("Grade", "BraTS_2020_subject_ID")]
    for grade in ("HGG", "LGG"):
        for folder in sorted((brats_root / grade).iterdir()):
            shutil.copytree(folder, flat / folder.name)
            mapping.append((grade, folder.name))
    records = read_records("brats", flat)
    assert all(r.label is None for r in records)  # 2021: no grades anywhere
    with (flat / "name_mapping.csv").open("w", newline="") as f:
        csv.writer(f).writerows(mapping)
    labels = {r.case_id: r.label for r in read_records("brats", flat)}
    assert labels == {case: ("LGG", "HGG").index(grade) for grade, case in mapping[1:]}
