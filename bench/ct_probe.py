"""Can the CT-only student see the lesion at all? A probe on an easier target than the grade.

The HCC grade is only moderately visible on CT (`bench.difficulty`: 0.79 AUC from hand-made
features with perfect masks), and CT-only students trained on it stay at chance. This probe
asks the student's encoder for something plainer: the lesion's log volume (from the tumour
mask, standardised), regressed from CT alone with a linear head on its pooled features,
mean squared error, no augmentation. It prints, per epoch, the correlation between the
predicted and the true log volume on the cases outside the train split, as JSON.

    python -m bench.ct_probe --data M.csv [--epochs 8] [--norm instance] [--pool topk] [--width 8]

A network that cannot rank lesions by size on held-out cases will not rank them by grade.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F

from models import create_model, get_task
from models.student import CBAMStudent
from training.data.dataset import CaseDataset
from training.data.readers import read_records


def probe(manifest: str, epochs: int, seed: int, batch_size: int = 4, **model_kwargs: object) -> list[float]:
    """Held-out correlation of predicted and true log lesion volume after each epoch."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    records = read_records("hcc", manifest)
    dataset = CaseDataset(records, get_task("hcc"), augment=False)
    items = [dataset[i] for i in range(len(dataset))]
    image = torch.stack([item["image"] for item in items])
    image[:, 1:] = 0.0  # CT alone
    present = torch.tensor([[1.0, 0.0, 0.0]]).repeat(len(items), 1)
    volume = torch.tensor([float(np.log1p(int((item["masks"]["tumor"] > 0).sum()))) for item in items])
    train = np.flatnonzero([r.split == "train" for r in records])
    held_out = np.flatnonzero([r.split != "train" for r in records])
    target = (volume - volume[train].mean()) / volume[train].std()

    net = cast(CBAMStudent, create_model("hcc_student", **model_kwargs))
    head = torch.nn.Linear(2 * net.num_features, 1)
    optimizer = torch.optim.AdamW([*net.parameters(), *head.parameters()], lr=1e-3)

    def predict(index: np.ndarray) -> torch.Tensor:
        features, _ = net.forward_features(image[index], present[index])
        return head(net.pool(features)).squeeze(1)

    correlations = []
    for _ in range(epochs):
        net.train()
        order = rng.permutation(train)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            loss = F.mse_loss(predict(batch), target[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        net.eval()
        with torch.no_grad():
            predicted = torch.cat([predict(held_out[i : i + 16]) for i in range(0, len(held_out), 16)])
        correlations.append(float(np.corrcoef(predicted.numpy(), target[held_out].numpy())[0, 1]))
    return correlations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="HCC manifest.csv with tumour masks")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--norm", default="instance")
    parser.add_argument("--pool", default="topk")
    args = parser.parse_args()
    started = time.perf_counter()
    correlations = probe(args.data, args.epochs, args.seed, width=args.width, norm=args.norm, pool=args.pool)
    print(
        json.dumps(
            {
                "benchmark": "ct_probe",
                "target": "log tumour volume from CT alone",
                "model_kwargs": {"width": args.width, "norm": args.norm, "pool": args.pool},
                "held_out_correlation_per_epoch": [round(c, 3) for c in correlations],
                "seconds": round(time.perf_counter() - started, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
