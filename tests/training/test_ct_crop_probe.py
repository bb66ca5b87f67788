"""`bench.ct_crop_probe` runs end to end on a generated cohort (its findings: docs/benchmark.md)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from bench.ct_crop_probe import lesion_crops, lesion_grid, probe, teacher_probabilities
from models.contract import resample
from tests.common import random_checkpoint
from training.data.readers import load_case, read_records


def test_the_crop_holds_the_lesion(hcc_manifest: Path) -> None:
    """A 64 mm cube on the mask's centroid holds most of each lesion (8-50 ml)."""
    for record in read_records("hcc", hcc_manifest)[:8]:
        tumour = load_case(record).masks["tumor"]
        grid = lesion_grid(tumour, size=16, spacing=4.0)
        inside = resample(tumour.array.astype(np.float32), tumour.affine, grid, order=0).sum() * 64.0
        total = float((tumour.array > 0).sum() * np.prod(tumour.spacing))
        assert inside >= 0.5 * total, record.case_id


def test_scratch_and_distilled_students_are_scored_each_epoch(hcc_manifest: Path, tmp_path: Path) -> None:
    records = read_records("hcc", hcc_manifest)[:8]
    crops = lesion_crops(records, size=16, spacing=4.0)
    assert crops.shape == (8, 1, 16, 16, 16) and crops.min() >= 0.0 and crops.max() <= 1.0

    checkpoint = tmp_path / "teacher.pt"
    torch.save(random_checkpoint("hcc_teacher_sf", "hcc"), checkpoint)
    teacher = teacher_probabilities(records, str(checkpoint))
    assert teacher.shape == (8, 3) and torch.allclose(teacher.sum(dim=1), torch.ones(8))

    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    train, held_out = np.arange(5), np.arange(5, 8)
    for soft in (None, teacher):
        aucs = probe(crops, labels, train, held_out, seed=0, epochs=2, teacher=soft, width=4)
        assert len(aucs) == 2 and all(math.isnan(a) or 0.0 <= a <= 1.0 for a in aucs)
