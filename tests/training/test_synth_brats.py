"""Synthetic BraTS cohort: layout, determinism, MRI contrasts and what the grades mean."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from cohort_shapes import BRATS_SHAPE

from training.data.synth_brats import generate_brats_case, write_brats_cohort


def test_layout_and_labels(brats_root: Path) -> None:
    cases = sorted((brats_root / "HGG").iterdir()) + sorted((brats_root / "LGG").iterdir())
    assert len(cases) == 12 and len(list((brats_root / "HGG").iterdir())) > len(
        list((brats_root / "LGG").iterdir())
    )
    for folder in cases:
        assert folder.name.startswith("BraTS19_SYN_") and folder.name.endswith("_1")
        names = sorted(p.name for p in folder.iterdir())
        assert names == sorted(f"{folder.name}_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair", "seg"))
        seg = np.asarray(nib.load(str(folder / f"{folder.name}_seg.nii.gz")).dataobj)
        assert set(np.unique(seg)) <= {0, 1, 2, 4} and seg.shape == BRATS_SHAPE


def test_deterministic_per_seed() -> None:
    a = generate_brats_case(4, 1, shape=BRATS_SHAPE, spacing=4.0)
    b = generate_brats_case(4, 1, shape=BRATS_SHAPE, spacing=4.0)
    c = generate_brats_case(5, 1, shape=BRATS_SHAPE, spacing=4.0)
    np.testing.assert_array_equal(a[1]["flair"], b[1]["flair"])
    np.testing.assert_array_equal(a[2], b[2])
    assert not np.array_equal(a[1]["flair"], c[1]["flair"])


def test_mri_contrasts_of_normal_tissue() -> None:
    _, images, seg, _ = generate_brats_case(0, 0, shape=BRATS_SHAPE, spacing=4.0)
    t1, t2, flair = images["t1"], images["t2"], images["flair"]
    # Tissue classes by their T2 / T1 look outside the tumour: CSF has the brightest T2.
    normal = (seg == 0) & (t1 > 0)
    csf = normal & (t2 > 850)
    wm = normal & (t1 > 600) & (t2 < 520)
    gm = normal & (t1 > 420) & (t1 < 600) & (t2 > 520) & (t2 < 750)
    assert csf.sum() > 10 and wm.sum() > 10 and gm.sum() > 10
    assert t1[wm].mean() > t1[gm].mean() > t1[csf].mean()
    assert t2[csf].mean() > t2[gm].mean() > t2[wm].mean()
    assert flair[csf].mean() < flair[wm].mean()


def test_hgg_enhances_more_and_has_larger_edema(brats_root: Path) -> None:
    stats: dict[str, list[tuple[int, int]]] = {"HGG": [], "LGG": []}
    for grade in stats:
        for folder in (brats_root / grade).iterdir():
            seg = np.asarray(nib.load(str(folder / f"{folder.name}_seg.nii.gz")).dataobj)
            stats[grade].append((int((seg == 4).sum()), int((seg == 2).sum())))
    enhancing = {g: np.mean([s[0] for s in v]) for g, v in stats.items()}
    edema = {g: np.mean([s[1] for s in v]) for g, v in stats.items()}
    assert enhancing["HGG"] > enhancing["LGG"], enhancing
    assert edema["HGG"] > edema["LGG"], edema


def test_the_share_of_lgg_is_drawn_as_asked() -> None:
    """`--lgg-fraction` is the chance of an LGG (0.5: a balanced cohort, whose test split
    holds enough LGG to count); the default keeps BraTS 2019's share."""
    for fraction, expected in ((1.0, "LGG"), (0.0, "HGG")):
        grades = {
            generate_brats_case(3, i, shape=BRATS_SHAPE, spacing=4.0, lgg_fraction=fraction)[0]
            for i in range(3)
        }
        assert grades == {expected}, fraction
    # The default draws the grades the cohorts before `--lgg-fraction` did (HGG below 3.4 / 4.4):
    # the same seed still gives the same cohort.
    from training.data.synth_brats import _case_rng

    default = [generate_brats_case(3, i, shape=BRATS_SHAPE, spacing=4.0)[0] for i in range(6)]
    assert default == ["HGG" if _case_rng(3, i).random() < 3.4 / 4.4 else "LGG" for i in range(6)]


def test_each_sign_leans_with_the_grade_and_none_decides_it() -> None:
    """docs/benchmark.md: every sign is larger for HGG on average, yet a quarter of HGG have
    no enhancing rim and a quarter of LGG enhance a little (mostly a focus)."""
    from training.data.synth_brats import _tumour_params

    rng = np.random.default_rng(0)
    draws = {grade: [_tumour_params(rng, grade == "HGG") for _ in range(2000)] for grade in ("HGG", "LGG")}

    def mean(grade: str, key: str) -> float:
        return float(np.mean([d[key] for d in draws[grade]]))

    for key in ("core_mm", "edema_mm", "ring_mm", "necrosis_frac", "mass_effect_mm"):
        assert mean("HGG", key) > mean("LGG", key), key
    hgg_without_rim = np.mean([d["ring_mm"] == 0 for d in draws["HGG"]])
    hgg_silent = np.mean([d["ring_mm"] == 0 and d["focus_mm"] == 0 for d in draws["HGG"]])
    lgg_enhancing = np.mean([d["ring_mm"] > 0 or d["focus_mm"] > 0 for d in draws["LGG"]])
    lgg_ring = np.mean([d["ring_mm"] > 0 for d in draws["LGG"]])
    assert 0.18 < hgg_without_rim < 0.3 and 0.03 < hgg_silent < 0.12
    assert 0.18 < lgg_enhancing < 0.32 and lgg_ring < 0.15


def test_a_skull_stripped_case_is_the_same_case_without_scalp_and_skull(tmp_path: Path) -> None:
    """Real BraTS scans come skull-stripped: the option keeps the brain, the tumour and the
    labels as they are and sets everything outside the brain to 0; a cohort asking for none
    draws the cases it always did."""
    kwargs = {"shape": BRATS_SHAPE, "spacing": 4.0}
    _, full, seg, _ = generate_brats_case(3, 1, **kwargs)  # type: ignore[arg-type]
    _, stripped, stripped_seg, _ = generate_brats_case(3, 1, skull_stripped=True, **kwargs)  # type: ignore[arg-type]
    assert np.array_equal(seg, stripped_seg)
    for name, image in stripped.items():
        kept = image > 0
        assert np.array_equal(image[kept], full[name][kept])  # kept as it was, or 0
        assert kept.sum() < 0.8 * (full[name] > 0).sum()  # scalp and skull gone
        assert np.array_equal(image[seg > 0], full[name][seg > 0])  # the tumour all there
    cohorts = {
        fraction: write_brats_cohort(tmp_path / str(fraction), 4, 3, workers=1, progress=False,
                                     skull_stripped=fraction, **kwargs)  # type: ignore[arg-type]
        for fraction in (0.0, 1.0)
    }  # fmt: skip
    none, some = cohorts[0.0], cohorts[1.0]
    t1 = next(none.glob("*/BraTS19_SYN_0001_1/*_t1.nii.gz"))
    _, first, _, _ = generate_brats_case(3, 0, **kwargs)  # type: ignore[arg-type]
    assert np.allclose(np.asarray(nib.load(t1).dataobj), np.rint(first["t1"]))
    assert sorted(p.name for p in some.glob("*/*")) == sorted(p.name for p in none.glob("*/*"))
