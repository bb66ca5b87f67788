"""Train a teacher or distil a student, top to bottom: setup, data, model, one loop.

Teachers learn from labels (class-weighted CE or focal loss); the dose-aware teacher also
sees each CT at a simulated low dose and is pulled to the same features as at full dose.
Students learn REACT-KD's way: logit distillation from the teachers' combined soft
targets, region graph distillation (GW between teacher and student region graphs), on a
simulated low-dose CT, with modality dropout. The best checkpoint is chosen on validation
macro AUC, never on training loss; training stops early when it stops improving.

The same function runs under `torchrun --nproc_per_node K` (DDP, gloo on CPU, NCCL on GPU):
each process takes a shard of the training set, rank 0 evaluates and writes.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import random
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from models import create_model, get_task, model_from_checkpoint, resolved_kwargs
from models.region_graph import (
    DEFAULT_SUPERVOXELS,
    distance_matrix,
    mask_regions,
    node_features,
    num_regions,
    supervoxel_regions,
)
from models.tasks import TaskSpec
from training.config import TrainConfig
from training.data.dataset import LESION_MASK, CaseDataset
from training.data.readers import CaseRecord, read_records
from training.losses import (
    attention_mask_loss,
    class_weights,
    combine_teachers,
    focal_loss,
    kd_loss,
    rgd_loss,
    teacher_weights_from_auc,
    weighted_cross_entropy,
)
from training.metrics import macro_auc
from training.modality_dropout import ModalityDropout

log = logging.getLogger(__name__)


@dataclass
class Distributed:
    """Where this process stands in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed() -> Distributed:
    """Join the process group that torchrun describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    return Distributed(rank=dist.get_rank(), world_size=world_size)


def decided_by_rank0(flag: bool, ddp: Distributed, device: torch.device) -> bool:
    """Rank 0's decision, the same in every process (so all stop at the same epoch)."""
    if not ddp.enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.broadcast(value, src=0)
    return bool(value.item())


def resolve_device(name: str, ddp: Distributed) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device(
            "cuda", int(os.environ.get("LOCAL_RANK", ddp.rank)) % max(torch.cuda.device_count(), 1)
        )
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ---------------------------------------------------------------------------- data


def split_records(cfg: TrainConfig) -> tuple[list[CaseRecord], list[CaseRecord]]:
    records = read_records(cfg.task, cfg.data)
    train = [r for r in records if r.split == "train" and r.label is not None]
    val = [r for r in records if r.split == "val" and r.label is not None]
    if cfg.max_cases is not None:
        train, val = train[: cfg.max_cases], val[: max(2, cfg.max_cases // 3)]
    if not train or not val:
        raise ValueError(
            f"{cfg.data}: need labelled train and val cases, found {len(train)} train and {len(val)} val"
        )
    return train, val


def make_loaders(
    cfg: TrainConfig, train: list[CaseRecord], val: list[CaseRecord], ddp: Distributed
) -> tuple[DataLoader, DataLoader]:
    needs_low_dose = cfg.task == "hcc" and cfg.low_dose is not None and cfg.kind != "structure-function"
    train_set = CaseDataset(
        train,
        get_task(cfg.task, cfg.grid),
        augment=cfg.augment,
        cache=cfg.cache,
        low_dose=cfg.low_dose if needs_low_dose else None,
        low_dose_prob=cfg.low_dose_prob,
        seed=cfg.seed,
    )
    val_set = CaseDataset(val, get_task(cfg.task, cfg.grid), augment=False, cache=cfg.cache)
    sampler: DistributedSampler | None = DistributedSampler(train_set, seed=cfg.seed) if ddp.enabled else None
    train_loader = DataLoader(
        train_set,
        batch_size=cfg.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=cfg.num_workers,
        drop_last=len(train_set) > cfg.batch_size,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    val_loader = DataLoader(val_set, batch_size=cfg.batch_size, num_workers=cfg.num_workers)
    return train_loader, val_loader


# ---------------------------------------------------------------------------- steps


class Objective:
    """The loss of one batch for the run's role; everything a step needs besides the model."""

    def __init__(
        self, cfg: TrainConfig, task: TaskSpec, train: list[CaseRecord], device: torch.device
    ) -> None:
        self.cfg = cfg
        self.task = task
        self.device = device
        self.weights = class_weights([r.label for r in train if r.label is not None], task.num_classes).to(
            device
        )
        checkpoints = [torch.load(p, map_location=device, weights_only=False) for p in cfg.teachers]
        for path, state in zip(cfg.teachers, checkpoints, strict=True):
            # Teachers read the student's batch: a teacher of another grid would see a field of
            # view it never learned.
            if state.get("grid", "whole") != cfg.grid:
                raise ValueError(
                    f"teacher {path} was trained on the {state.get('grid', 'whole')!r} grid; "
                    f"this run is on the {cfg.grid!r} grid"
                )
        weights = mixing_weights(cfg, checkpoints)
        if cfg.teachers:
            log.info("teacher weights %s for %s", [round(w, 3) for w in weights], cfg.teachers)
        # A teacher of weight 0 changes nothing: it is not run at all.
        self.teachers = [
            model_from_checkpoint(c).to(device) for c, w in zip(checkpoints, weights, strict=True) if w > 0
        ]
        self.teacher_weights = [w for w in weights if w > 0]
        for teacher in self.teachers:
            teacher.requires_grad_(False)
        if cfg.role == "student" and not self.teachers:
            log.info("no teachers given: the student trains from labels alone (the from-scratch baseline)")
        self.dropout = (
            ModalityDropout(task, cfg.modality_dropout, cfg.modality_dropout_weights)
            if cfg.role == "student"
            else None
        )
        self.student_inputs = modality_mask(task, cfg.input_modalities).to(device)
        self.generator = torch.Generator().manual_seed(cfg.seed + 1)

    def supervised(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.cfg.loss == "focal":
            return focal_loss(logits, target, self.weights)
        return weighted_cross_entropy(logits, target, self.weights)

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        image = batch["image"].to(self.device)
        present = batch["present"].to(self.device)
        target = batch["label"].to(self.device)
        if self.cfg.role == "teacher" and self.cfg.kind == "dose-aware":
            loss, parts, out = self._dose_aware(model, image, batch, present, target)
        elif self.cfg.role == "teacher":
            out = model(image, present)
            loss = self.supervised(out.logits, target)
            parts = {}
        else:
            loss, parts, out = self._student(model, image, batch, present, target)
        lesion = batch.get("masks", {}).get(LESION_MASK[self.task.name])
        if self.cfg.attention_supervision > 0 and lesion is not None:
            attend = attention_mask_loss(out.attention, lesion.to(self.device))
            loss = loss + self.cfg.attention_supervision * attend
            parts["attention"] = attend.item()
        parts["loss"] = loss.item()
        return loss, parts

    def _dose_aware(self, model, image, batch, present, target):  # type: ignore[no-untyped-def]
        low = batch.get("image_low_dose", batch["image"]).to(self.device)
        full_out = model(image, present)
        low_out = model(low, present)
        sup = 0.5 * (self.supervised(full_out.logits, target) + self.supervised(low_out.logits, target))
        consistency = F.mse_loss(low_out.features, full_out.features.detach())
        loss = sup + self.cfg.dose_consistency * consistency
        return loss, {"consistency": consistency.item()}, full_out

    def _student(self, model, image, batch, present, target):  # type: ignore[no-untyped-def]
        student_image = batch.get("image_low_dose", batch["image"]).to(self.device)
        assert self.dropout is not None
        student_image, student_present = self.dropout(
            student_image, present * self.student_inputs, self.generator
        )
        out = model(student_image, student_present)
        if not self.teachers:
            return self.supervised(out.logits, target), {}, out

        with torch.no_grad():  # teachers see everything, at full dose
            teacher_outs = [teacher(image, present) for teacher in self.teachers]
        soft = combine_teachers([t.logits for t in teacher_outs], self.cfg.temperature, self.teacher_weights)
        kd = kd_loss(
            out.logits,
            soft,
            target,
            temperature=self.cfg.temperature,
            alpha=self.cfg.alpha,
            ce_weights=self.weights,
        )
        parts = {"kd": kd.item()}
        loss = kd
        if self.cfg.rgd_weight > 0:
            rgd = self._rgd(out.features, [t.features for t in teacher_outs], batch)
            loss = loss + self.cfg.rgd_weight * rgd
            parts["rgd"] = rgd.item()
        return loss, parts, out

    def _rgd(
        self, student_features: torch.Tensor, teacher_features: list[torch.Tensor], batch: dict
    ) -> torch.Tensor:
        """GW between the student's region graph and each teacher's, mixed by the teacher weights."""
        labels, num_regions = region_labels(batch, self.task, self.cfg.rgd_regions)
        labels = labels.to(self.device)
        s_nodes, region_weights = node_features(student_features, labels, num_regions)
        s_dist = distance_matrix(s_nodes)
        total = sum(self.teacher_weights)
        loss = student_features.new_zeros(())
        for w, features in zip(self.teacher_weights, teacher_features, strict=True):
            t_nodes, _ = node_features(features, labels, num_regions)
            loss = loss + (w / total) * rgd_loss(distance_matrix(t_nodes), s_dist, region_weights)
        return loss


def mixing_weights(cfg: TrainConfig, checkpoints: list[dict[str, Any]]) -> list[float]:
    """The weight of each teacher in the soft target and the region graph loss.

    They read every modality at full dose whatever the student is given, so one weight per
    teacher holds for every case. (A per-case rule, each teacher weighted by its AUC on the
    student's own subset, handed CT-only cases to the weaker dose-aware teacher and did worse
    on validation: reports/ablation-hcc-lesion.)
    """
    if isinstance(cfg.teacher_weights, list):
        return cfg.teacher_weights
    if cfg.teacher_weights == "equal" or not checkpoints:
        return [1.0] * len(checkpoints)
    aucs = [c.get("val_auc", c.get("best_val_auc")) for c in checkpoints]
    missing = [str(p) for p, auc in zip(cfg.teachers, aucs, strict=True) if auc is None]
    if missing:
        raise ValueError(
            f"teacher_weights='val_auc' needs each teacher's validation AUC, which {missing} lack; "
            "give teacher_weights as numbers or 'equal'"
        )
    known = [float(auc) for auc in aucs if auc is not None]
    if not any(auc > 0.5 for auc in known):
        log.warning("no teacher beats chance on validation (AUCs %s): they are mixed equally", known)
    return teacher_weights_from_auc(known)


def region_labels(batch: dict[str, Any], task: TaskSpec, source: str) -> tuple[torch.Tensor, int]:
    """(N, D, H, W) region label maps and the region count.

    Regions come from the cases' masks (tumour components, peritumoral shell, liver parts;
    BraTS sub-regions), or from supervoxels when asked or when a case of the batch has none.
    """
    masks = batch.get("masks", {})
    n = batch["image"].shape[0]
    has_masks = bool(masks) and all(any(bool(m[i].any()) for m in masks.values()) for i in range(n))
    if source == "masks" and has_masks:
        maps = [mask_regions(task.name, {name: m[i].numpy() for name, m in masks.items()}) for i in range(n)]
        count = num_regions(task.name)
    else:
        maps = [supervoxel_regions(image.numpy()) for image in batch["image"]]
        count = DEFAULT_SUPERVOXELS
    return torch.as_tensor(np.stack(maps).astype(np.int64)), count


def modality_mask(task: TaskSpec, names: list[str] | None) -> torch.Tensor:
    """(M,) 1 for the modalities in `names` (all when None), 0 for the others."""
    return torch.tensor([1.0 if names is None or m in names else 0.0 for m in task.modalities])


def validation_scores(
    model: nn.Module, loader: DataLoader, device: torch.device, given: torch.Tensor | None = None
) -> tuple[float, float]:
    """Validation macro AUC and mean cross-entropy, given the modalities of the (M,) mask
    `given` (default: every modality the cases have)."""
    was_training = model.training
    model.eval()
    probs, labels, losses = [], [], []
    with torch.no_grad():
        for batch in loader:
            present = batch["present"] if given is None else batch["present"] * given
            image = batch["image"] * present[:, :, None, None, None]
            out = model(image.to(device), present.to(device))
            target = batch["label"].to(device)
            losses.append(float(F.cross_entropy(out.logits, target, reduction="sum")))
            probs.append(F.softmax(out.logits, dim=1).cpu().numpy())
            labels.append(target.cpu().numpy())
    model.train(was_training)
    y, p = np.concatenate(labels), np.concatenate(probs)
    return macro_auc(y, p), sum(losses) / max(len(y), 1)


# ---------------------------------------------------------------------------- run


def save_checkpoint(path: Path, net: nn.Module, cfg: TrainConfig, **extra: Any) -> None:
    state = {
        "model": cfg.model,
        # Every default filled in: the checkpoint rebuilds this network even if defaults change.
        "model_kwargs": resolved_kwargs(cfg.model, **cfg.model_kwargs),
        "task": cfg.task,
        "grid": cfg.grid,
        "role": cfg.role,
        "kind": cfg.kind,
        "state_dict": net.state_dict(),
        "config": cfg.model_dump(mode="json"),
        "git_commit": git_commit(),
        **extra,
    }
    write_checkpoint(path, state)


def write_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """`torch.save` through a temporary file: a crash mid-write never leaves a truncated
    checkpoint behind."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def batches(loader: DataLoader, epoch: int, show: bool, desc: str) -> Iterator[dict[str, Any]]:
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    yield from tqdm(loader, desc=desc, leave=False, disable=not show, dynamic_ncols=True)


def train(cfg: TrainConfig, *, resume: bool = False) -> Path:
    """Run `cfg` and return the path of the best checkpoint."""
    # --- setup
    ddp = setup_distributed()
    device = resolve_device(cfg.device, ddp)
    seed_everything(cfg.seed + ddp.rank)
    task = get_task(cfg.task, cfg.grid)
    run_dir = cfg.run_dir
    if ddp.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    writer = _tensorboard(run_dir) if ddp.is_main else None

    # --- data
    train_records, val_records = split_records(cfg)
    train_loader, val_loader = make_loaders(cfg, train_records, val_records, ddp)
    log.info(
        "%s: %d train and %d val cases from %s", cfg.name, len(train_records), len(val_records), cfg.data
    )

    # --- model
    net = create_model(cfg.model, **cfg.model_kwargs).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    start_epoch, best_auc, stale = 0, -math.inf, 0
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    # The weights validated, selected and kept: the raw ones, or their moving average.
    average = (
        AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
        if cfg.ema_decay > 0
        else None
    )
    kept: nn.Module = net if average is None else average.module
    if resume and last_path.exists():
        state = torch.load(last_path, map_location=device, weights_only=False)
        net.load_state_dict(state["state_dict"])
        if average is not None and "average" in state:
            average.load_state_dict(state["average"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best_auc, stale = state["epoch"] + 1, state["best_val_auc"], state["stale"]
        log.info("resumed %s at epoch %d (best val AUC %.3f)", cfg.name, start_epoch, best_auc)
    model: nn.Module = DistributedDataParallel(net) if ddp.enabled else net
    objective = Objective(cfg, task, train_records, device)

    # --- loop
    epochs = tqdm(range(start_epoch, cfg.epochs), desc=cfg.name, disable=not ddp.is_main, dynamic_ncols=True)
    for epoch in epochs:
        model.train()
        totals: dict[str, float] = {}
        steps = 0
        for batch in batches(train_loader, epoch, ddp.is_main, f"epoch {epoch}"):
            loss, parts = objective(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if average is not None:
                average.update_parameters(net)
            for key, value in parts.items():
                totals[key] = totals.get(key, 0.0) + value
            steps += 1
        scheduler.step()
        stop = False
        if ddp.is_main:
            val_auc, val_loss = validation_scores(
                kept, val_loader, device, modality_mask(task, cfg.val_modalities)
            )
            row = {
                "epoch": epoch,
                **{f"train_{k}": v / max(steps, 1) for k, v in totals.items()},
                "val_loss": val_loss,
                "val_auc": val_auc,
                "lr": scheduler.get_last_lr()[0],
            }
            _log_metrics(run_dir / "metrics.csv", row, writer, epoch)
            epochs.set_postfix(loss=f"{row.get('train_loss', float('nan')):.3f}", val_auc=f"{val_auc:.3f}")
            # Model selection on validation AUC only; a NaN AUC (one class in val) never wins.
            if epoch < cfg.select_from_epoch:
                pass  # not a candidate yet, and not counted against patience
            elif (not math.isnan(val_auc) and val_auc > best_auc) or not best_path.exists():
                best_auc = val_auc if not math.isnan(val_auc) else best_auc
                stale = 0
                save_checkpoint(best_path, kept, cfg, epoch=epoch, val_auc=val_auc, metrics=row)
            else:
                stale += 1
            save_checkpoint(
                last_path,
                net,
                cfg,
                epoch=epoch,
                best_val_auc=best_auc,
                stale=stale,
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                **({"average": average.state_dict()} if average is not None else {}),
                metrics=row,
            )
            stop = stale >= cfg.patience
        if decided_by_rank0(stop, ddp, device):
            log.info(
                "%s: no better validation AUC for %d epochs, stopping at epoch %d", cfg.name, stale, epoch
            )
            break
    if ddp.enabled:
        dist.barrier()
        dist.destroy_process_group()
    if writer is not None:
        writer.close()
    return best_path


def _tensorboard(run_dir: Path):  # type: ignore[no-untyped-def]
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but a missing one must not stop training
        log.warning("tensorboard is not installed: scalars go to metrics.csv only")
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def append_row(path: Path, row: dict[str, float]) -> None:
    """One row of a run's metrics.csv (its header written with the first)."""
    new = not path.exists()
    with path.open("a", newline="") as f:
        out = csv.DictWriter(f, fieldnames=list(row))
        if new:
            out.writeheader()
        out.writerow(row)


def _log_metrics(path: Path, row: dict[str, float], writer, epoch: int) -> None:  # type: ignore[no-untyped-def]
    append_row(path, row)
    if writer is not None:
        for key, value in row.items():
            if key != "epoch":
                writer.add_scalar(key, value, epoch)
