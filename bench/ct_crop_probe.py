"""Does the CT student learn the grade once it is shown where the lesion is? And then, does
distillation help? A probe with an oracle crop.

Each case's CT is resampled onto a small cube centred on its tumour mask's centroid (by
default 48 voxels of 2 mm: 96 mm), so the student no longer has to find the lesion in the
whole abdomen. `hcc_student` is trained on the grade from CT alone (flips, AdamW), from
scratch or, with `--teacher`, distilled from that checkpoint's softened probabilities on the
full input (every modality the case has) as in training: ``alpha * T^2 * KL + (1 - alpha) *
CE``. It prints, per seed, the macro AUC on the cases outside the train split after each
epoch, as JSON.

    python -m bench.ct_crop_probe --data M.csv [--teacher SF.pt] [--seeds 0 1 2 3] [--epochs 30]

The masks are an oracle here: a served model would need the lesion found first (by the
client's segmentation, or a detector).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from models import create_model, get_task, model_from_checkpoint, prepare_input
from models.contract import Grid, Volume, normalize, resample, to_tensor_layout
from training.data.readers import load_case, read_records
from training.metrics import macro_auc


def lesion_grid(tumour: Volume, size: int, spacing: float) -> Grid:
    """A cube of `size` voxels of `spacing` mm centred on the tumour mask's centroid."""
    centre = (tumour.affine @ np.append(np.argwhere(tumour.array > 0).mean(axis=0), 1.0))[:3]
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = centre - spacing * (size - 1) / 2
    return Grid((size, size, size), affine)


def lesion_crops(records: list, size: int, spacing: float) -> torch.Tensor:
    """(N, 1, size, size, size) normalised CT cubes centred on each case's tumour."""
    task = get_task("hcc")
    crops = []
    for record in records:
        case = load_case(record)
        ct = case.volumes["ct"]
        grid = lesion_grid(case.masks["tumor"], size, spacing)
        on_grid = resample(ct.array, ct.affine, grid, cval=-1024.0)
        crops.append(to_tensor_layout(normalize(on_grid, "ct", task)))
    return torch.from_numpy(np.stack(crops))[:, None]


def teacher_probabilities(records: list, checkpoint: str) -> torch.Tensor:
    """The teacher's probabilities on each case's full input (its own grid, every modality)."""
    task = get_task("hcc")
    teacher = model_from_checkpoint(torch.load(checkpoint, map_location="cpu", weights_only=False))
    out = []
    with torch.no_grad():
        for record in records:
            prepared = prepare_input(load_case(record).volumes, task)
            image, present = torch.from_numpy(prepared.image[None]), torch.from_numpy(prepared.present[None])
            out.append(teacher(image, present).logits.softmax(dim=1)[0])
    return torch.stack(out)


def probe(
    crops: torch.Tensor,
    labels: torch.Tensor,
    train: np.ndarray,
    held_out: np.ndarray,
    *,
    seed: int,
    epochs: int,
    teacher: torch.Tensor | None = None,
    alpha: float = 0.7,
    temperature: float = 4.0,
    width: int = 8,
    batch_size: int = 8,
) -> list[float]:
    """Held-out macro AUC after each epoch of one student."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = create_model("hcc_student", in_channels=1, width=width)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-2)
    present = torch.ones(1, 1)
    aucs = []
    for _ in range(epochs):
        net.train()
        order = rng.permutation(train)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            x = crops[batch]
            for axis in (2, 3, 4):
                if rng.random() < 0.5:
                    x = x.flip(axis)
            logits = net(x, present.expand(len(batch), 1)).logits
            loss = F.cross_entropy(logits, labels[batch])
            if teacher is not None:
                soft = (teacher[batch].clamp_min(1e-12).log() / temperature).softmax(dim=1)
                kd = F.kl_div(F.log_softmax(logits / temperature, dim=1), soft, reduction="batchmean")
                loss = alpha * temperature**2 * kd + (1 - alpha) * loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        net.eval()
        with torch.no_grad():
            probs = torch.cat(
                [
                    net(crops[held_out[i : i + 16]], present.expand(len(held_out[i : i + 16]), 1)).logits
                    for i in range(0, len(held_out), 16)
                ]
            ).softmax(dim=1)
        aucs.append(macro_auc(labels[held_out].numpy(), probs.numpy()))
    return aucs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="HCC manifest.csv with tumour masks")
    parser.add_argument("--teacher", help="a teacher checkpoint to distil from (else from scratch)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--size", type=int, default=48, help="crop side in voxels")
    parser.add_argument("--spacing", type=float, default=2.0, help="crop voxel size in mm")
    args = parser.parse_args()
    started = time.perf_counter()
    records = [r for r in read_records("hcc", args.data) if r.label is not None]
    crops = lesion_crops(records, args.size, args.spacing)
    labels = torch.tensor([int(r.label) for r in records])  # labelled, filtered above
    train = np.flatnonzero([r.split == "train" for r in records])
    held_out = np.flatnonzero([r.split != "train" for r in records])
    teacher = teacher_probabilities(records, args.teacher) if args.teacher else None
    runs = {
        seed: probe(crops, labels, train, held_out, seed=seed, epochs=args.epochs, teacher=teacher)
        for seed in args.seeds
    }
    last5 = [statistics.mean(aucs[-5:]) for aucs in runs.values()]
    print(
        json.dumps(
            {
                "benchmark": "ct_crop_probe",
                "crop": f"{args.size} voxels of {args.spacing} mm, centred on the tumour mask",
                "teacher": args.teacher,
                "held_out_cases": len(held_out),
                "held_out_auc_per_epoch": {str(s): [round(a, 3) for a in aucs] for s, aucs in runs.items()},
                "mean_of_last_5_epochs": {
                    "per_seed": [round(v, 3) for v in last5],
                    "mean": round(statistics.mean(last5), 3),
                    "std": round(statistics.stdev(last5), 3) if len(last5) > 1 else None,
                },
                "seconds": round(time.perf_counter() - started, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
