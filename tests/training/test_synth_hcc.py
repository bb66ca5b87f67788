"""Synthetic HCC cohort: determinism, files and manifest, and what the grades mean."""

from __future__ import annotations

import csv
import itertools
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from cohort_shapes import HCC_SHAPE

from models.contract import Grid, resample
from training.data.synth_hcc import GRADES, MANIFEST_COLUMNS, generate_hcc_case, write_hcc_cohort


def rows_of(manifest: Path) -> list[dict[str, str]]:
    with manifest.open(newline="") as f:
        return list(csv.DictReader(f))


def test_same_seed_same_case_and_different_seed_differs() -> None:
    a = generate_hcc_case(11, 3, shape=HCC_SHAPE)
    b = generate_hcc_case(11, 3, shape=HCC_SHAPE)
    c = generate_hcc_case(12, 3, shape=HCC_SHAPE)
    for name in a.volumes:
        np.testing.assert_array_equal(a.volumes[name], b.volumes[name])
        np.testing.assert_array_equal(a.affines[name], b.affines[name])
    np.testing.assert_array_equal(a.masks["tumor"], b.masks["tumor"])
    assert not np.array_equal(a.volumes["ct"], c.volumes["ct"])


def test_case_does_not_depend_on_workers(tmp_path: Path) -> None:
    manifest = write_hcc_cohort(tmp_path, 3, seed=5, workers=2, progress=False, shape=HCC_SHAPE)
    written = nib.load(str(manifest.parent / rows_of(manifest)[2]["ct"]))
    direct = generate_hcc_case(5, 2, shape=HCC_SHAPE)
    np.testing.assert_array_equal(np.asarray(written.dataobj), np.rint(direct.volumes["ct"]))
    np.testing.assert_allclose(written.affine, direct.affines["ct"], atol=1e-4)


def test_manifest_and_files(hcc_manifest: Path) -> None:
    rows = rows_of(hcc_manifest)
    assert tuple(rows[0]) == MANIFEST_COLUMNS
    assert {r["grade"] for r in rows} == set(GRADES)
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    ct = nib.load(str(hcc_manifest.parent / rows[0]["ct"]))
    pet = nib.load(str(hcc_manifest.parent / rows[0]["pet_fdg"]))
    tumor = nib.load(str(hcc_manifest.parent / rows[0]["tumor_mask"]))
    assert ct.get_data_dtype() == np.float32 and tumor.get_data_dtype() == np.uint8
    assert ct.header.get_xyzt_units()[0] == "mm"
    assert ct.shape == HCC_SHAPE and tumor.shape == HCC_SHAPE
    assert np.allclose(ct.header.get_zooms(), np.linalg.norm(ct.affine[:3, :3], axis=0))
    # PET lies on its own, coarser grid with its own origin.
    assert pet.shape != ct.shape and not np.allclose(pet.affine, ct.affine)


def test_external_cohort_rows_per_dose_ct_only(tmp_path: Path) -> None:
    manifest = write_hcc_cohort(
        tmp_path, 2, seed=5, external=True, workers=1, progress=False, shape=(40, 40, 20)
    )
    rows = rows_of(manifest)
    assert [r["case_id"] for r in rows[:5]] == [f"ext0000_d{d}" for d in ("100", "50", "25", "10", "05")]
    assert all(r["split"] == "test" and r["pet_fdg"] == "" and r["pet_act"] == "" for r in rows)
    assert [float(r["dose"]) for r in rows[:5]] == [1.0, 0.5, 0.25, 0.1, 0.05]
    ct = nib.load(str(manifest.parent / rows[0]["ct"]))
    assert ct.affine[0, 0] < 0  # stored LPS-wise like a DICOM conversion; the affine says so


def test_tissue_values_match_the_rules() -> None:
    case = generate_hcc_case(2, 0)  # default geometry, 3 mm voxels
    ct, liver, tumor = case.volumes["ct"], case.masks["liver"] > 0, case.masks["tumor"] > 0
    assert 95 < np.median(ct[liver & ~tumor]) < 120
    assert np.median(ct[tumor]) < np.median(ct[liver & ~tumor])
    assert np.median(ct[ct < -500]) < -900  # air
    fat = (ct > -160) & (ct < -40)
    assert fat.mean() > 0.02


def tumour_to_liver(
    case_ct_grid: Grid, pet: np.ndarray, pet_affine: np.ndarray, tumor: np.ndarray, liver: np.ndarray
) -> float:
    on_ct = resample(pet, pet_affine, case_ct_grid)
    return float(on_ct[tumor].mean() / on_ct[liver & ~tumor].mean())


@pytest.mark.parametrize(("tracer", "direction"), [("pet_fdg", 1), ("pet_act", -1)])
def test_pet_tumour_to_liver_ratio_tracks_grade(hcc_manifest: Path, tracer: str, direction: int) -> None:
    by_grade: dict[str, list[float]] = defaultdict(list)
    ct_lesion_contrast: dict[str, list[float]] = defaultdict(list)
    for row in rows_of(hcc_manifest):
        ct, pet, tumor_img, liver_img = (
            nib.load(str(hcc_manifest.parent / row[key]))
            for key in ("ct", tracer, "tumor_mask", "liver_mask")
        )
        tumor = np.asarray(tumor_img.dataobj) > 0
        liver = np.asarray(liver_img.dataobj) > 0
        grid = Grid(shape=ct.shape, affine=ct.affine)
        by_grade[row["grade"]].append(
            tumour_to_liver(grid, np.asarray(pet.dataobj), pet.affine, tumor, liver)
        )
        hu = np.asarray(ct.dataobj)
        ct_lesion_contrast[row["grade"]].append(float(hu[liver & ~tumor].mean() - hu[tumor].mean()))
    means = [np.mean(by_grade[g]) for g in GRADES]
    assert all(direction * (b - a) > 0 for a, b in itertools.pairwise(means)), means
    # CT: every grade hypo-attenuating on average, well less so than poor.
    contrast = [np.mean(ct_lesion_contrast[g]) for g in GRADES]
    assert min(contrast) > 0 and contrast[0] < contrast[2], contrast
