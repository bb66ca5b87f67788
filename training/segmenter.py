"""Train one stage of a task's segmenter, top to bottom: setup, data, model, one loop. The
HCC cascade's two stages (`models.segmenter`) train apart, on the same cohorts: ``coarse``
on the whole scan, ``fine`` on the box of the true organ (widened by more than the served
margin, so windows see what the coarse stage's box may add). BraTS has the coarse stage only.

Cases come from one or more cohorts: for HCC in the manifest layout (the grading benchmark,
the broad torso cohort of `training.data.synth_torso`, or real data with liver and tumour
masks), for BraTS folders in its layout with ``seg`` label maps. Each is brought onto the
segmenter's grid once (`models.segmenter.segmenter_input`, what the service computes) and
kept in a cache folder. Training then draws windows of the network's ``roi`` centred on a
lesion, on the organ (the whole tumour) or anywhere, moves them with MONAI's spatial and
intensity augmentation, hides sequences (`modality_dropout`: the service meets studies with
any of them), and minimises MONAI's `DiceCELoss`. Every ``val_every`` steps the validation
cases are segmented whole (`sliding_window`, the service's inference) and scored with
MONAI's `DiceMetric` on each nested region (`SegmenterSpec.regions`); the best mean is kept
as ``best.pt``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandAffined,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandShiftIntensityd,
)
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.utils.data import DataLoader, Dataset, RandomSampler
from tqdm.auto import tqdm

from models import create_model, resolved_kwargs
from models.contract import Grid, Volume, _index_box, _world_box, resample, to_tensor_layout
from models.segmenter import (
    SegmenterSpec,
    Stage,
    StageName,
    box_grid,
    coarse_grid,
    get_segmenter_spec,
    labels_from_probabilities,
    reference_scan,
    segmenter_input,
    sliding_window,
)
from training.data.readers import CaseRecord, load_case, read_brats, read_hcc_manifest
from training.data.synth_hcc import run_jobs
from training.train import (
    Distributed,
    append_row,
    git_commit,
    resolve_device,
    seed_everything,
    write_checkpoint,
)

log = logging.getLogger(__name__)

SEGMENTER_MODELS = {"hcc": "hcc_segmenter", "brats": "brats_segmenter"}


class SegmenterConfig(BaseModel):
    """Everything one segmenter run needs; unknown keys are refused so typos are caught."""

    model_config = ConfigDict(extra="forbid")

    task: Literal["hcc", "brats"] = "hcc"
    stage: StageName = "coarse"
    data: list[Path] = Field(
        description="cohorts with masks: HCC manifests (liver and tumour), BraTS folders (seg)"
    )
    out: Path = Path("runs")
    name: str = ""
    cache: Path | None = Field(
        None, description="folder of prepared cases, per stage (default OUT/NAME/cache)"
    )
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    model: str = ""
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    steps: int = Field(4000, ge=1)
    batch_size: int = Field(2, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    val_every: int = Field(250, ge=1)
    val_cases: int = Field(24, ge=1, description="validation cases segmented at each check")
    max_cases: int | None = Field(None, ge=2, description="use only the first N cases of each cohort")
    # Where training windows are centred: a lesion voxel, an organ voxel, or anywhere.
    window_centres: tuple[float, float, float] = (0.4, 0.3, 0.3)
    # Training windows may be smaller than the served roi (the network is convolutional, and
    # a 64^3 window costs a third of a 96^3 one); validation uses the served roi.
    window: tuple[int, int, int] | None = Field(
        None, description="training window (D, H, W); default the roi"
    )
    # The chance that a window keeps a random non-empty subset of the sequences, each subset
    # as likely (the others zeroed, as a study without them is served); 0 for one channel.
    modality_dropout: float = Field(0.0, ge=0.0, le=1.0)
    num_workers: int = Field(1, ge=0)
    workers: int | None = Field(None, ge=1, description="processes preparing the cache (default: all cores)")

    @model_validator(mode="after")
    def _resolve(self) -> SegmenterConfig:
        self.model = self.model or SEGMENTER_MODELS[self.task]
        self.name = self.name or f"{self.task}-segmenter-{self.stage}-s{self.seed}"
        if self.stage not in get_segmenter_spec(self.task).stages:
            raise ValueError(f"the {self.task} segmenter has no {self.stage} stage")
        if self.window is not None and any(w % 16 for w in self.window):
            raise ValueError(f"window sides must be multiples of 16 (the U-Net's strides), got {self.window}")
        if abs(sum(self.window_centres) - 1.0) > 1e-6 or min(self.window_centres) < 0:
            raise ValueError(
                f"window_centres must be non-negative shares summing to 1, got {self.window_centres}"
            )
        return self

    @property
    def run_dir(self) -> Path:
        return self.out / self.name


def load_segmenter_config(path: Path | None, overrides: dict[str, Any]) -> SegmenterConfig:
    values: dict[str, Any] = yaml.safe_load(Path(path).read_text()) or {} if path is not None else {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(values).__name__}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return SegmenterConfig.model_validate(values)


# ---------------------------------------------------------------------------- data


def segmentation_records(task: str, cohorts: list[Path], max_cases: int | None = None) -> list[CaseRecord]:
    """Every case of the cohorts that has its masks: HCC an organ mask (a lesion mask is
    optional), BraTS a ``seg`` label map."""
    records: list[CaseRecord] = []
    for cohort in cohorts:
        if task == "brats":
            found = [r for r in read_brats(cohort) if "seg" in r.mask_paths]
            missing = "no case has a seg label map"
        else:
            found = [r for r in read_hcc_manifest(cohort) if "liver" in r.mask_paths]
            missing = "no case has a liver_mask"
        if not found:
            raise ValueError(f"{cohort}: {missing}; the segmenter learns from masks")
        records += found[:max_cases] if max_cases else found
    return records


def label_regions(case_masks: dict[str, Volume], spec: SegmenterSpec) -> list[Volume | None]:
    """Each label's region (the label and those inside it), label 1 first, as a binary
    `Volume` (None: the case has no mask for it). HCC: the liver and tumour masks; BraTS:
    the ``seg`` map's whole tumour, core and enhancing tumour (its old label 3 read as 1)."""
    seg = case_masks.get("seg")
    if seg is not None:
        indices = spec.label_indices(np.rint(seg.array).astype(np.int64))
        return [Volume((indices >= k).astype(np.uint8), seg.affine) for k in range(1, spec.num_labels)]
    return [case_masks.get("liver"), case_masks.get("tumor")]


def target_labels(case_masks: dict[str, Volume], grid: Any, spec: SegmenterSpec) -> np.ndarray:
    """(D, H, W) uint8 label indices on the segmenter grid: each label's region painted over
    the one before it, each sampled trilinearly and cut at one half (so a fine mask is not
    thinned by nearest sampling)."""
    labels = np.zeros(grid.shape[::-1], dtype=np.uint8)
    for value, mask in enumerate(label_regions(case_masks, spec), start=1):
        if mask is None:
            continue
        on_grid = resample((mask.array > 0).astype(np.float32), mask.affine, grid, order=1)
        labels[to_tensor_layout(on_grid) >= 0.5] = value
    return labels


# The fine stage trains on the organ's box widened by this much beyond its served margin.
FINE_EXTRA_MARGIN_MM = 15.0


def stage_grid(case: Any, spec: SegmenterSpec, stage: StageName) -> Grid | None:
    """The grid of `stage` for a training case; the fine one around the true organ (None
    for a case without one: the fine stage never runs there)."""
    if stage == "coarse":
        return coarse_grid(reference_scan(case.volumes, spec), spec)
    organ = case.masks.get("liver")
    if organ is None or not organ.array.any():
        return None
    low, high = _world_box(organ.affine, *_index_box(organ.array > 0))
    fine = spec.stage("fine")
    wider = replace(fine, margin_mm=fine.margin_mm + FINE_EXTRA_MARGIN_MM)
    return box_grid(low, high, wider)


def _prepare(job: tuple[CaseRecord, str, str, str]) -> str | None:
    """Worker: one case onto a stage's grid, written as ``CACHE/<case_id>-<files>.npz`` (None:
    the stage has nothing to learn from the case). The files' digest tells apart cases of two
    cohorts that share an id (synthetic BraTS cohorts all count from BraTS19_SYN_0001_1)."""
    record, task, stage, cache = job
    files = hashlib.sha1("|".join(str(p.resolve()) for p in sorted(record.paths.values())).encode())
    path = Path(cache) / f"{record.case_id}-{files.hexdigest()[:10]}.npz"
    if path.exists():
        return str(path)
    spec = get_segmenter_spec(task)
    case = load_case(record)
    grid = stage_grid(case, spec, stage)  # type: ignore[arg-type]
    if grid is None:
        return None
    prepared = segmenter_input(case.volumes, spec, grid)
    labels = target_labels(case.masks, prepared.grid, spec)
    temp = path.with_suffix(".tmp.npz")
    np.savez_compressed(
        temp,
        image=prepared.image.astype(np.float16),
        labels=labels,
        scanned=prepared.scanned,
        affine=prepared.grid.affine,
    )
    temp.replace(path)
    return str(path)


def prepare_cache(
    records: list[CaseRecord], task: str, stage: StageName, cache: Path, workers: int | None
) -> list[Path]:
    """Each record's prepared case in `cache` (made once; a rerun reuses the files)."""
    cache.mkdir(parents=True, exist_ok=True)
    jobs = [(r, task, stage, str(cache)) for r in records]
    return [Path(p) for p in run_jobs(_prepare, jobs, workers, True, f"prepare {stage}") if p is not None]


def load_prepared(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as npz:
        return {key: npz[key] for key in npz.files}


def augmentation(seed: int) -> Compose:
    """MONAI's spatial and intensity augmentation of a window (image, label).

    No flips: the liver lies on the patient's right, and a mirrored abdomen is not one the
    service meets. Rotations are mostly in the axial plane; intensity shifts of 0.05 are about
    30 HU of soft tissue on the segmenter's intensity curve.
    """
    keys = ["image", "label"]
    transforms = Compose(
        [
            RandAffined(
                keys=keys,
                prob=0.6,
                rotate_range=(0.26, 0.08, 0.08),
                scale_range=(0.15, 0.15, 0.15),
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            RandGaussianSmoothd(
                keys="image", prob=0.15, sigma_x=(0.3, 1.0), sigma_y=(0.3, 1.0), sigma_z=(0.3, 1.0)
            ),
            RandGaussianNoised(keys="image", prob=0.3, std=0.03),
            RandScaleIntensityd(keys="image", factors=0.12, prob=0.5),
            RandShiftIntensityd(keys="image", offsets=0.06, prob=0.5),
            RandAdjustContrastd(keys="image", prob=0.3, gamma=(0.75, 1.35)),
        ]
    )
    transforms.set_random_state(seed=seed)
    return transforms


class WindowDataset(Dataset):
    """Random training windows: ``{"image" (channels, *roi) float32, "label" (1, *roi) int64}``.

    Item i draws a case and a centre from its own random stream (seed, i, epoch), so runs
    repeat; windows reaching past the grid are padded with air (0) and background. With
    `modality_dropout` p, a window keeps a random non-empty subset of its channels (each
    subset as likely) with chance p (the rest zeros, as a study without them is served).
    """

    def __init__(
        self,
        paths: list[Path],
        spec: SegmenterSpec,
        roi: tuple[int, int, int],
        centres: tuple[float, float, float],
        seed: int,
        modality_dropout: float = 0.0,
    ):
        self.paths = paths
        self.spec = spec
        self.roi = roi
        self.centres = centres
        self.seed = seed
        self.modality_dropout = modality_dropout
        self._cache: dict[int, dict[str, np.ndarray]] = {}
        self._augment = augmentation(seed)
        self._draws = 0
        self._worker_seed: int | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def case(self, index: int) -> dict[str, np.ndarray]:
        """A prepared case, with the voxels windows may be centred on (kept in memory)."""
        if index not in self._cache:
            case = load_prepared(self.paths[index])
            labels = case["labels"]
            case["lesion_voxels"] = np.argwhere(labels == self.spec.num_labels - 1)
            case["organ_voxels"] = np.argwhere(labels > 0)[::7]
            self._cache[index] = case
        return self._cache[index]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        worker_seed = torch.initial_seed() % 2**31  # each DataLoader worker has its own
        if worker_seed != self._worker_seed:
            self._worker_seed = worker_seed
            self._augment.set_random_state(seed=(self.seed + worker_seed) % 2**31)
        self._draws += 1
        rng = np.random.default_rng([self.seed, worker_seed, self._draws])
        case = self.case(index)
        image, labels = case["image"], case["labels"]
        centre = self._centre(case, rng)
        window = tuple(
            slice(int(c) - r // 2, int(c) - r // 2 + r) for c, r in zip(centre, self.roi, strict=True)
        )
        item = {  # the window cast, not the case: a whole fine case to float32 took 0.1 s a step
            "image": _crop(image, (slice(0, len(image)), *window), 0.0).astype(np.float32),
            "label": _crop(labels, window, 0)[None].astype(np.float32),
        }
        out = self._augment(item)
        channels = np.asarray(out["image"], dtype=np.float32)
        if len(channels) > 1 and rng.random() < self.modality_dropout:
            # Every non-empty subset equally likely: each sequence alone as often as any pair.
            subset = int(rng.integers(1, 2 ** len(channels)))
            kept = (subset >> np.arange(len(channels))) & 1
            channels = channels * kept[:, None, None, None].astype(np.float32)
        return {
            "image": torch.as_tensor(channels, dtype=torch.float32),
            "label": torch.as_tensor(np.asarray(out["label"])).round().long(),
        }

    def _centre(self, case: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
        """A lesion voxel, an organ voxel or any voxel, by `centres`; a case without a lesion
        (or an organ) gives the next kind instead."""
        kind = int(rng.choice(3, p=self.centres))
        for voxels in (case["lesion_voxels"], case["organ_voxels"])[kind:]:
            if len(voxels):
                return voxels[rng.integers(len(voxels))]
        return rng.integers(0, case["labels"].shape)


def _crop(array: np.ndarray, window: tuple[slice, ...], fill: float) -> np.ndarray:
    """`array[window]` with the parts beyond the array filled with `fill`."""
    out = np.full([s.stop - s.start for s in window], fill, dtype=array.dtype)
    source, target = [], []
    for s, n in zip(window, array.shape, strict=True):
        lo, hi = max(s.start, 0), min(s.stop, n)
        source.append(slice(lo, max(hi, lo)))
        target.append(slice(lo - s.start, lo - s.start + max(hi - lo, 0)))
    out[tuple(target)] = array[tuple(source)]
    return out


# ---------------------------------------------------------------------------- validation


def case_dice(predicted: np.ndarray, target: np.ndarray, spec: SegmenterSpec) -> dict[str, float]:
    """Dice of each nested region (`SegmenterSpec.regions`: label k or above) of one case,
    by MONAI's `DiceMetric`; NaN where the target has none (a case without a lesion has no
    lesion Dice)."""
    regions = range(1, spec.num_labels)
    pred = torch.as_tensor(np.stack([predicted >= k for k in regions])[None], dtype=torch.float32)
    true = torch.as_tensor(np.stack([target >= k for k in regions])[None], dtype=torch.float32)
    scores = DiceMetric(include_background=True, reduction="none", ignore_empty=True)(pred, true)[0]
    return {name: float(score) for name, score in zip(spec.regions, scores, strict=True)}


def validate(
    net: torch.nn.Module, paths: list[Path], spec: SegmenterSpec, stage: Stage, device: torch.device
) -> dict[str, float]:
    """Mean Dice of each region over whole validation cases, segmented as the service does
    with every channel; with several, also each one alone (``val_<modality>_score``, the
    mean over regions), as the service meets them. ``val_score`` is the mean over these
    subsets: the checkpoint kept is the best on what the service will be sent."""
    was_training = net.training
    net.eval()

    def predict(window: torch.Tensor) -> torch.Tensor:
        return net(window.to(device)).cpu()

    subsets = {"all": np.ones(spec.channels, dtype=np.float32)}
    if spec.channels > 1:
        subsets.update(
            {name: np.eye(spec.channels, dtype=np.float32)[i] for i, name in enumerate(spec.modalities)}
        )
    scores: dict[str, list[dict[str, float]]] = {name: [] for name in subsets}
    for path in paths:
        case = load_prepared(path)
        grid = Grid(shape=tuple(int(s) for s in case["labels"].shape[::-1]), affine=case["affine"])  # type: ignore[arg-type]
        for name, kept in subsets.items():
            image = case["image"].astype(np.float32) * kept[:, None, None, None]
            probabilities = sliding_window(predict, image, stage)
            labels = labels_from_probabilities(probabilities, spec, grid)
            scores[name].append(case_dice(labels, case["labels"], spec))
    net.train(was_training)
    row, means = {}, []
    for subset, rows in scores.items():
        regions = {}
        for region in spec.regions:
            found = [s[region] for s in rows if not math.isnan(s[region])]
            regions[region] = float(np.mean(found)) if found else float("nan")
        means.append(float(np.nanmean(list(regions.values()))))
        if subset == "all":
            row.update({f"val_{region}_dice": value for region, value in regions.items()})
        else:
            row[f"val_{subset}_score"] = means[-1]
    row["val_score"] = float(np.mean(means))
    return row


# ---------------------------------------------------------------------------- run


def save_checkpoint(path: Path, net: torch.nn.Module, cfg: SegmenterConfig, **extra: Any) -> None:
    state = {
        "model": cfg.model,
        "model_kwargs": resolved_kwargs(cfg.model, **cfg.model_kwargs),
        "task": cfg.task,
        "role": "segmenter",
        "kind": "segmenter",
        "stage": cfg.stage,
        "state_dict": net.state_dict(),
        "config": cfg.model_dump(mode="json"),
        "git_commit": git_commit(),
        **extra,
    }
    write_checkpoint(path, state)


def train_segmenter(cfg: SegmenterConfig, *, resume: bool = False) -> Path:
    """Run `cfg` and return the path of the best checkpoint."""
    # --- setup
    device = resolve_device(cfg.device, Distributed())
    seed_everything(cfg.seed)
    spec = get_segmenter_spec(cfg.task)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))

    # --- data
    records = segmentation_records(cfg.task, cfg.data, cfg.max_cases)
    train_records = [r for r in records if r.split == "train"]
    val_records = [r for r in records if r.split == "val"]
    if not train_records or not val_records:
        raise ValueError(f"need train and val cases, found {len(train_records)} and {len(val_records)}")
    cache = cfg.cache / cfg.stage if cfg.cache else run_dir / "cache"
    train_paths = prepare_cache(train_records, cfg.task, cfg.stage, cache, cfg.workers)
    rng = np.random.default_rng(cfg.seed)
    val_pick = sorted(rng.choice(len(val_records), min(cfg.val_cases, len(val_records)), replace=False))
    val_paths = prepare_cache([val_records[i] for i in val_pick], cfg.task, cfg.stage, cache, cfg.workers)
    log.info("%s: %d train and %d val cases from %s", cfg.name, len(train_paths), len(val_paths), cfg.data)
    stage = spec.stage(cfg.stage)
    windows = WindowDataset(
        train_paths, spec, cfg.window or stage.roi, cfg.window_centres, cfg.seed, cfg.modality_dropout
    )
    sampler = RandomSampler(
        windows,
        replacement=True,
        num_samples=cfg.steps * cfg.batch_size,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    loader = DataLoader(windows, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers)

    # --- model
    net = create_model(cfg.model, **cfg.model_kwargs).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (1 - step / cfg.steps) ** 0.9)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    step, best, minutes_before = 0, -math.inf, 0.0
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    if resume and last_path.exists():
        state = torch.load(last_path, map_location=device, weights_only=False)
        net.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, best = state["step"], state["best_score"]
        minutes_before = float(state.get("metrics", {}).get("minutes", 0.0))
        log.info("resumed %s at step %d (best validation score %.3f)", cfg.name, step, best)

    # --- loop
    started = time.monotonic()  # the card's minutes: training and validation, resumed runs summed
    net.train()
    running: list[float] = []
    bar = tqdm(total=cfg.steps, initial=step, desc=cfg.name, dynamic_ncols=True)
    for batch in loader:
        if step >= cfg.steps:
            break
        logits = net(batch["image"].to(device))
        loss = loss_fn(logits, batch["label"].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        step += 1
        running.append(loss.item())
        bar.update()
        if step % cfg.val_every == 0 or step == cfg.steps:
            row = {
                "step": step,
                "train_loss": float(np.mean(running)),
                "lr": float(scheduler.get_last_lr()[0]),
            }
            row.update(validate(net, val_paths, spec, stage, device))
            row["minutes"] = round(minutes_before + (time.monotonic() - started) / 60.0, 2)
            running = []
            append_row(run_dir / "metrics.csv", row)
            bar.set_postfix(
                loss=f"{row['train_loss']:.3f}",
                **{name: f"{row[f'val_{name}_dice']:.3f}" for name in spec.regions},
            )
            if row["val_score"] > best:
                best = row["val_score"]
                save_checkpoint(best_path, net, cfg, step=step, val_score=best, metrics=row)
            save_checkpoint(
                last_path,
                net,
                cfg,
                step=step,
                best_score=best,
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                metrics=row,
            )
    bar.close()
    return best_path
