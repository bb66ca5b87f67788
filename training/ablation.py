"""The ablation of REACT-KD: what each part of the method buys, over several seeds.

    reactkd ablation --task hcc --config BASE.yaml --data M.csv --external EXT.csv \\
        --teachers SF.pt DOSE.pt --seeds 0 1 2 --out reports/ablation-hcc

A ladder of students, each step adding one part of the method to the step before:

| step | adds |
|---|---|
| `scratch` | a student from labels alone, on the required modalities only (HCC: CT), without CBAM3D |
| `+kd` | logit distillation from the first teacher (PET/CT; BraTS: the hybrid) |
| `+rgd` | region graph distillation (GW between teacher and student region graphs) |
| `+cbam3d` | the CBAM3D attention block in the student |
| `+modality_dropout` | every modality given in training, dropped to a random allowed subset |
| `full` | HCC only: the dose-aware teacher as second teacher, and simulated low-dose CT |

`BASE.yaml` is a student run config holding the full method's values (epochs, weights,
temperature, dropout probability, dose range); each step switches parts off from it. A part
the base itself switches off (`modality_dropout: 0`, `rgd_weight: 0`) is no step, and the full
method is the method without it (`hcc_lesion_student_ct_only.yaml`: a student given CT
alone, taught by both teachers, on simulated low-dose CT). Every
(step, seed) is trained by `training.train.train`, the function `reactkd train` runs, and
selected on validation with the required modalities only (what the service mostly sees).
Each run is then evaluated on the internal test split under every allowed modality subset
and, where given, on the external cohort at each dose level. A finished run's results are
kept in its folder and not redone, so an interrupted ablation continues where it stopped;
the same command started in several processes shares the runs out (one per core is fastest
on CPU: `OMP_NUM_THREADS=1`), and the last to finish writes the complete table.
The table (`ablation.md`, `ablation.json`) gives mean and standard deviation over seeds, the
teachers' reference AUCs, and checks the targets of the method stated in issue #6. Each run
keeps its probabilities (`predictions.npz`), so the table also gives every step's gain over
scratch with a paired bootstrap interval over the test cases: the seeds' spread says how much
training varies, the interval how much the test set's own sampling does.

A small test split judges noisily. `--test-data M.csv --trained-runs OLD/runs --out NEW`
judges the finished networks of an earlier ablation again, on every labelled case of a
larger cohort from the same source, training nothing.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from models import get_task, model_from_checkpoint
from models.tasks import TaskSpec
from training.config import TrainConfig, load_config
from training.data.dataset import prepare_case
from training.data.readers import CaseRecord, load_case, read_records
from training.metrics import macro_auc, paired_auc_gain_ci

log = logging.getLogger(__name__)

# The parts of the method, in the order the ladder adds them.
PARTS = ("kd", "rgd", "cbam3d", "modality_dropout", "dose")
# A judged run's class probabilities and labels, beside its result.json.
PREDICTIONS = "predictions.npz"


@dataclass(frozen=True)
class Step:
    name: str
    parts: frozenset[str]


def ladder(task: TaskSpec, left_out: frozenset[str] = frozenset()) -> list[Step]:
    """scratch, then one more part per step; the last step is the full method.

    `left_out`: parts the base config itself switches off (`parts_left_out`); no step adds
    them, and the full method is the method without them."""
    parts = [p for p in PARTS if (p != "dose" or "ct" in task.modalities) and p not in left_out]
    steps = [Step("scratch", frozenset())]
    for i, part in enumerate(parts):
        name = "full" if i == len(parts) - 1 and part == "dose" else f"+{part}"
        steps.append(Step(name, frozenset(parts[: i + 1])))
    return steps


def select_steps(steps: Sequence[Step], names: Sequence[str]) -> list[Step]:
    """The steps named, in ladder order, with scratch and the full method (the last) always."""
    unknown = set(names) - {s.name for s in steps}
    if unknown:
        raise ValueError(f"no step {sorted(unknown)} in the ladder {[s.name for s in steps]}")
    kept = {"scratch", steps[-1].name, *names}
    return [s for s in steps if s.name in kept]


def parts_left_out(base: dict[str, Any]) -> frozenset[str]:
    """The parts a base config switches off: `modality_dropout: 0` (a student given the
    required modalities alone, CT for HCC) or `rgd_weight: 0`."""
    off = {"modality_dropout": not base.get("modality_dropout"), "rgd": not base.get("rgd_weight")}
    return frozenset(part for part, is_off in off.items() if is_off)


def step_overrides(
    step: Step, task: TaskSpec, base: dict[str, Any], teachers: Sequence[Path]
) -> dict[str, Any]:
    """The run config values that switch off the parts `step` lacks."""
    out: dict[str, Any] = {"val_modalities": list(task.required) or None}
    uses_dose = "dose" in step.parts
    out["teachers"] = [] if "kd" not in step.parts else [str(t) for t in teachers[: None if uses_dose else 1]]
    if "rgd" not in step.parts:
        out["rgd_weight"] = 0.0
    out["model_kwargs"] = {**base.get("model_kwargs", {}), "attention": "cbam3d" in step.parts}
    if "modality_dropout" not in step.parts:
        out["modality_dropout"] = 0.0
        out["input_modalities"] = list(task.required) or None
    if not uses_dose:
        out["low_dose"] = None
    return out


# ---------------------------------------------------------------------------- evaluation


@dataclass
class Cohort:
    """Prepared inputs of labelled cases, grouped by setting (a modality subset or a dose)."""

    images: dict[str, np.ndarray]  # setting -> (N, M, D, H, W)
    presents: dict[str, np.ndarray]  # setting -> (N, M)
    labels: dict[str, np.ndarray]  # setting -> (N,)


HELD = np.float16
"""How prepared test images are held between runs (`prepare_internal`)."""


def prepare_internal(records: Sequence[CaseRecord], task: TaskSpec) -> Cohort:
    """The test cases under every allowed modality subset, prepared once for every run.

    Each case is prepared as it is read, so only the model's grids are held (a thousand
    synthetic HCC cases at full size would hold another 8.6 GB), and they are held in float16
    (`HELD`): 330 BraTS cases under its 15 subsets were 26 GB in float32. The networks read
    them back in float32; z-scores and windowed intensities keep three significant digits."""
    subsets = {"+".join(subset): subset for subset in task.allowed_subsets()}
    grids: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {key: [] for key in subsets}
    labels = []
    for record in tqdm(records, desc="internal test cases", leave=False):
        case = load_case(record)
        labels.append(case.label)
        for key, subset in subsets.items():
            prepared = prepare_case(case, task, subset)
            grids[key].append((prepared.image.astype(HELD), prepared.present))
    cohort = Cohort({}, {}, {})
    for key in subsets:
        pairs = grids.pop(key)  # freed as it is stacked: the cases are not held twice
        cohort.images[key] = np.stack([image for image, _ in pairs])
        cohort.presents[key] = np.stack([present for _, present in pairs])
        cohort.labels[key] = np.asarray(labels, dtype=np.int64)
    return cohort


def prepare_external(records: Sequence[CaseRecord], task: TaskSpec) -> Cohort:
    """The labelled external cases grouped by CT dose level (as given: CT only)."""
    cohort = Cohort({}, {}, {})
    by_dose: dict[str, list[tuple[np.ndarray, np.ndarray, int]]] = {}
    for record in tqdm(records, desc="external cases", leave=False):
        if record.label is None:
            continue
        prepared = prepare_case(load_case(record), task)
        key = f"{float(record.meta.get('dose', 1.0)):g}"
        by_dose.setdefault(key, []).append((prepared.image.astype(HELD), prepared.present, record.label))
    for key in sorted(by_dose, key=float, reverse=True):
        images, presents, labels = zip(*by_dose[key], strict=True)
        cohort.images[key], cohort.presents[key] = np.stack(images), np.stack(presents)
        cohort.labels[key] = np.asarray(labels, dtype=np.int64)
    return cohort


def judge(checkpoint: Path, internal: Cohort, external: Cohort | None, run_dir: Path) -> dict[str, Any]:
    """A run's result, kept in `run_dir/result.json`: its macro AUC in every setting of both
    cohorts, and its selected epoch.

    Its probabilities and the labels are kept beside it (`PREDICTIONS`): the table's paired
    bootstrap of each step's gain over scratch scores every run on the same resampled cases."""
    result: dict[str, Any] = {}
    arrays: dict[str, Any] = {}  # (typed Any: numpy stubs read a key as allow_pickle)
    for where, cohort in (("internal", internal), ("external", external or Cohort({}, {}, {}))):
        probs = cohort_probs(checkpoint, cohort)
        result[where] = {key: macro_auc(cohort.labels[key], p) for key, p in probs.items()}
        for key, p in probs.items():
            arrays[f"{where}.{key}"] = p.astype(np.float32)
            arrays[f"labels.{where}.{key}"] = cohort.labels[key]
    np.savez_compressed(run_dir / PREDICTIONS, **arrays)
    result["best_epoch"] = torch.load(checkpoint, map_location="cpu", weights_only=False)["epoch"]
    (run_dir / "result.json").write_text(json.dumps(result, indent=2))
    return result


def cohort_aucs(checkpoint: Path, cohort: Cohort) -> dict[str, float]:
    """Macro AUC of a checkpoint in each setting of `cohort`."""
    return {key: macro_auc(cohort.labels[key], p) for key, p in cohort_probs(checkpoint, cohort).items()}


def cohort_probs(checkpoint: Path, cohort: Cohort, batch: int = 8) -> dict[str, np.ndarray]:
    """Class probabilities of a checkpoint for every case, in each setting of `cohort`."""
    model = model_from_checkpoint(torch.load(checkpoint, map_location="cpu", weights_only=False)).eval()
    out = {}
    with torch.no_grad():
        for key, images in cohort.images.items():
            logits = [
                model(
                    torch.from_numpy(images[i : i + batch].astype(np.float32)),
                    torch.from_numpy(cohort.presents[key][i : i + batch]),
                ).logits
                for i in range(0, len(images), batch)
            ]
            out[key] = torch.softmax(torch.cat(logits), dim=1).numpy()
    return out


# ---------------------------------------------------------------------------- runs


def run_ablation(
    task_name: str,
    base_config: Path,
    data: Path,
    teachers: Sequence[Path],
    seeds: Sequence[int],
    out: Path,
    external: Path | None = None,
    command: str = "",
    test_data: Path | None = None,
    trained_runs: Path | None = None,
    only_steps: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Train and evaluate every (step, seed); write ``ablation.json``, ``ablation.md`` and a figure.

    `only_steps`: the steps of the ladder to run (by name, e.g. ``+kd``); scratch and the full
    method are always run, so the comparison that matters fits a shorter budget.

    `test_data`: judge the students on every labelled case of this cohort instead of the test
    split of `data` (a larger held-out cohort from the same source). `trained_runs`: the
    runs folder of an earlier ablation whose finished runs are judged again, nothing trained
    (with `test_data`, a second opinion on the same networks; the table goes to `out`).
    """
    from training.train import train

    if not teachers:
        raise ValueError("the ablation needs the teacher checkpoints (--teachers)")
    base = load_config(base_config, {"task": task_name, "role": "student", "data": data}).model_dump(
        mode="json"
    )
    task = get_task(task_name, base["grid"])
    if "ct" in task.modalities and len(teachers) < 2:
        raise ValueError(f"task {task.name!r} needs two teachers: the PET/CT and the dose-aware one")
    out = Path(out)
    if test_data is None:
        records = [r for r in read_records(task.name, data) if r.split == "test" and r.label is not None]
    else:
        records = [r for r in read_records(task.name, test_data) if r.label is not None]
    internal = prepare_internal(records, task)
    ext = None
    if external is not None:
        ext = prepare_external(read_records(task.name, external), task)

    results: dict[str, Any] = {
        "command": command,
        "task": task.name,
        "base_config": base,
        "seeds": list(seeds),
        "n_internal_test": len(records),
        "judged_on": str(test_data or f"the test split of {data}"),
        "trained_runs": str(trained_runs or out / "runs"),
        "teachers": {str(t): _teacher_reference(t, internal, ext) for t in teachers},
        "steps": {},
    }
    steps = ladder(task, parts_left_out(base))
    results["full_step"] = steps[-1].name
    if only_steps is not None:
        steps = select_steps(steps, only_steps)
    jobs = [(step, seed) for seed in seeds for step in steps]
    for step, seed in tqdm(jobs, desc=f"ablation {task.name}", unit="run"):
        name = f"{step.name.lstrip('+')}-s{seed}"
        run_dir = out / "runs" / name
        result_file = run_dir / "result.json"
        if not result_file.exists() and trained_runs is not None:
            finished = Path(trained_runs) / name
            if (finished / "result.json").exists():  # judged again, never trained here
                run_dir.mkdir(parents=True, exist_ok=True)
                judge(finished / "best.pt", internal, ext, run_dir)
        elif not result_file.exists() and claim(run_dir):
            values = {**base, **step_overrides(step, task, base, teachers), "seed": seed, "name": name}
            values["out"] = str(out / "runs")
            # Validated as given: a step's None (no low-dose CT) must override the base's value,
            # which load_config's command-line rule (None = flag not given) would drop.
            best = train(TrainConfig.model_validate(values), resume=True)
            judge(best, internal, ext, run_dir)
            (run_dir / "last.pt").unlink(missing_ok=True)  # best.pt is kept; the folder stays small
        if result_file.exists():
            entry = results["steps"].setdefault(step.name, {"parts": sorted(step.parts), "runs": {}})
            entry["runs"][str(seed)] = json.loads(result_file.read_text())
    # Ladder order, whichever runs finished first (other processes may still train some).
    results["steps"] = {s.name: results["steps"][s.name] for s in steps if s.name in results["steps"]}
    missing = len(jobs) - sum(len(s["runs"]) for s in results["steps"].values())
    if missing:
        log.warning(
            "%d runs are not finished (another process may be training them): the table leaves them out",
            missing,
        )
    results["complete"] = not missing

    summarise(results, task)
    add_gain_intervals(results, out / "runs")
    (out / "ablation.json").write_text(json.dumps(results, indent=2, allow_nan=True))
    (out / "ablation.md").write_text(markdown_table(results, task))
    plot_ablation(results, out / "ablation.png")
    return results


def claim(run_dir: Path) -> bool:
    """Whether this process may train `run_dir`: several processes running the same ablation
    share its runs, each claiming a run with a file naming its PID (a dead owner's claim is
    taken over, and its run resumed from last.pt)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "claim.pid"
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        owner = int(path.read_text() or 0)
        if owner != os.getpid() and _alive(owner):
            return False
        path.write_text(str(os.getpid()))
        return True
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0


def _teacher_reference(checkpoint: Path, internal: Cohort, ext: Cohort | None) -> dict[str, Any]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    return {
        "model": state["model"],
        "internal": cohort_aucs(checkpoint, internal),
        "external": cohort_aucs(checkpoint, ext) if ext else {},
    }


# ---------------------------------------------------------------------------- summary


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {
        "mean": float(np.mean(finite)),
        "std": float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0,
        "n": len(finite),
    }


def summarise(results: dict[str, Any], task: TaskSpec) -> None:
    """Add mean/std over seeds per setting to every step, and the verdict on the targets."""
    headline = "+".join(task.required) if task.required else "+".join(task.modalities)
    for step in results["steps"].values():
        runs = list(step["runs"].values())
        step["summary"] = {
            where: {key: _mean_std([r[where][key] for r in runs]) for key in runs[0][where]}
            for where in ("internal", "external")
        }
        doses = [k for k in runs[0]["external"]]
        if "1" in doses and "0.1" in doses:
            step["summary"]["dose_loss_100_to_10"] = _mean_std(
                [r["external"]["1"] - r["external"]["0.1"] for r in runs]
            )
    results["headline_setting"] = headline
    scratch, full = results["steps"].get("scratch"), results["steps"].get(results["full_step"])
    if scratch is None or full is None:
        return
    targets: dict[str, Any] = {}

    def beats(where: str, key: str) -> dict[str, Any]:
        s, f = scratch["summary"][where][key], full["summary"][where][key]
        margin = f["mean"] - s["mean"]
        spread = max(s["std"], f["std"])
        return {
            "scratch": s["mean"],
            "full": f["mean"],
            "gain": margin,
            "seed_std": spread,
            "met": margin > spread,
        }

    targets["internal_beats_scratch"] = beats("internal", headline)
    if "1" in full["summary"]["external"]:
        targets["external_beats_scratch"] = beats("external", "1")
    teacher = next(iter(results["teachers"].values()))  # HCC: the PET/CT one
    teacher_auc = teacher["internal"].get("+".join(task.modalities), math.nan)
    gap = teacher_auc - scratch["summary"]["internal"][headline]["mean"]
    targets["gap_to_teacher_closed"] = {
        "teacher": teacher["model"],
        "teacher_all_modalities": teacher_auc,
        "share": targets["internal_beats_scratch"]["gain"] / gap if gap > 0 else math.nan,
    }
    if "dose_loss_100_to_10" in full["summary"]:
        s, f = (
            scratch["summary"]["dose_loss_100_to_10"]["mean"],
            full["summary"]["dose_loss_100_to_10"]["mean"],
        )
        targets["smaller_dose_loss_than_scratch"] = {"scratch": s, "full": f, "met": f < s}
    results["targets"] = targets


def target_settings(results: dict[str, Any]) -> dict[str, str]:
    """The setting each target judges (`where.key`): the headline subset internally, full
    dose externally."""
    settings = {"internal_beats_scratch": f"internal.{results['headline_setting']}"}
    if "1" in results["steps"]["scratch"]["summary"]["external"]:
        settings["external_beats_scratch"] = "external.1"
    return settings


def add_gain_intervals(results: dict[str, Any], runs_dir: Path, seed: int = 0) -> None:
    """Each step's gain in macro AUC over scratch in the targets' settings, with a paired
    bootstrap 95 % interval over the test cases (`paired_auc_gain_ci`; mean over seeds on
    both sides): how large a gain the test set can tell from none. Nothing is added when a
    run lacks its predictions (judged before they were kept)."""
    steps = results["steps"]
    predictions = _load_predictions(steps, runs_dir) if "scratch" in steps else None
    if predictions is None:
        return
    settings = target_settings(results)
    first = predictions["scratch"][0]  # every run's labels are the same (checked on loading)
    for name, step in steps.items():
        if name == "scratch":
            continue
        step["gain_over_scratch"] = {}
        for setting in settings.values():
            where, key = setting.split(".", 1)
            low, high = paired_auc_gain_ci(
                first[f"labels.{setting}"],
                [p[setting] for p in predictions[name]],
                [p[setting] for p in predictions["scratch"]],
                seed=seed,
            )
            gain = step["summary"][where][key]["mean"] - steps["scratch"]["summary"][where][key]["mean"]
            step["gain_over_scratch"][setting] = {"gain": gain, "ci95": [low, high]}
    full = steps.get(results["full_step"], {})
    for target, setting in settings.items():
        if target in results.get("targets", {}) and "gain_over_scratch" in full:
            low, high = full["gain_over_scratch"][setting]["ci95"]
            results["targets"][target]["gain_ci95"] = [low, high]
            results["targets"][target]["ci_excludes_zero"] = bool(low > 0 or high < 0)


def _load_predictions(steps: dict[str, Any], runs_dir: Path) -> dict[str, list[dict[str, np.ndarray]]] | None:
    """Every listed run's kept predictions by step, or None where one is missing."""
    paths = {
        name: [runs_dir / f"{name.lstrip('+')}-s{seed}" / PREDICTIONS for seed in step["runs"]]
        for name, step in steps.items()
    }
    if not all(p.exists() for found in paths.values() for p in found):
        return None
    loaded = {name: [dict(np.load(p)) for p in found] for name, found in paths.items()}
    first = loaded["scratch"][0]
    for run in (run for runs in loaded.values() for run in runs):
        if any(not np.array_equal(run[k], first[k]) for k in first if k.startswith("labels.")):
            raise ValueError(f"the runs of {runs_dir} were judged on different cohorts")
    return loaded


def _cell(stat: dict[str, float]) -> str:
    if math.isnan(stat["mean"]):
        return "n/a"
    if stat["n"] < 2:  # no spread from a single seed
        return f"{stat['mean']:.3f} (1 seed)"
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def table_subsets(subsets: list[str]) -> list[str]:
    """The modality subsets the markdown table shows: all of them when few (HCC has 4),
    else every modality together and each alone (BraTS has 15; the JSON keeps them all)."""
    if len(subsets) <= 6:
        return subsets
    return [k for k in subsets if "+" not in k or k.count("+") == max(s.count("+") for s in subsets)]


def markdown_table(results: dict[str, Any], task: TaskSpec) -> str:
    steps = results["steps"]
    first = next(iter(steps.values()))["summary"]
    subsets = table_subsets(list(first["internal"]))
    doses = list(first["external"])
    lines = [
        f"# Ablation of REACT-KD on `{task.name}`",
        "",
        f"`{results['command']}`" if results["command"] else "",
        "",
        f"Seeds {results['seeds']}; {results['n_internal_test']} internal test cases "
        f"({results['judged_on']}); the networks of `{results['trained_runs']}`. Macro AUC, mean ± std "
        "over seeds. Students are selected on validation with "
        f"`{results['headline_setting']}` alone. Synthetic data (docs/benchmark.md): not real patients.",
        "",
        "| step | internal "
        + " | internal ".join(subsets)
        + "".join(f" | external {float(d) * 100:g}% dose" for d in doses)
        + (" | AUC lost 100%→10% |" if "dose_loss_100_to_10" in first else " |"),
        "|---" * (1 + len(subsets) + len(doses) + ("dose_loss_100_to_10" in first)) + "|",
    ]
    for name, step in steps.items():
        s = step["summary"]
        cells = [_cell(s["internal"][k]) for k in subsets] + [_cell(s["external"][d]) for d in doses]
        if "dose_loss_100_to_10" in s:
            cells.append(_cell(s["dose_loss_100_to_10"]))
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    lines += _gain_table(steps)
    lines += [
        "",
        "Teachers (reference, one run each):",
        "",
        "| teacher | internal "
        + " | internal ".join(subsets)
        + "".join(f" | external {float(d) * 100:g}%" for d in doses)
        + " |",
        "|---" * (1 + len(subsets) + len(doses)) + "|",
    ]
    for teacher in results["teachers"].values():
        cells = [f"{teacher['internal'].get(k, math.nan):.3f}" for k in subsets]
        cells += [f"{teacher['external'].get(d, math.nan):.3f}" for d in doses]
        lines.append(f"| `{teacher['model']}` | " + " | ".join(cells) + " |")
    if "targets" in results:
        lines += ["", "## Targets (issue #6)", ""]
        for name, t in results["targets"].items():
            lines.append(
                f"- **{name.replace('_', ' ')}**: " + ", ".join(f"{k} {_num(v)}" for k, v in t.items())
            )
    return "\n".join(lines) + "\n"


def _gain_table(steps: dict[str, Any]) -> list[str]:
    gains = {name: step["gain_over_scratch"] for name, step in steps.items() if "gain_over_scratch" in step}
    if not gains:
        return []
    settings = list(next(iter(gains.values())))
    heads = [
        f"{where} {key}" if where == "internal" else f"external {float(key) * 100:g}% dose"
        for where, key in (s.split(".", 1) for s in settings)
    ]
    lines = [
        "",
        "Gain in macro AUC over `scratch` (mean over seeds), with its 95 % paired bootstrap interval "
        "over the test cases (every run scored on the same resampled cases). An interval holding 0 "
        "is a gain this test set cannot tell from none; the seeds' spread is the table above.",
        "",
        "| step | " + " | ".join(heads) + " |",
        "|---" * (1 + len(heads)) + "|",
    ]
    for name, gain in gains.items():
        cells = [f"{g['gain']:+.3f} ({g['ci95'][0]:+.3f} to {g['ci95'][1]:+.3f})" for g in gain.values()]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return lines


def _num(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list):  # an interval
        return " to ".join(_num(v) for v in value)
    return str(value)


def plot_ablation(results: dict[str, Any], path: Path) -> None:
    """Left: headline internal AUC per step. Right: external AUC against dose per step, or,
    without an external cohort (BraTS), internal AUC per single modality per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = results["steps"]
    headline = results["headline_setting"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(steps)
    means = [steps[n]["summary"]["internal"][headline]["mean"] for n in names]
    stds = [steps[n]["summary"]["internal"][headline]["std"] for n in names]
    left.bar(range(len(names)), means, yerr=stds, capsize=4, color="#4c72b0")
    left.set_xticks(range(len(names)), names, rotation=30, ha="right")
    left.set_ylabel(f"internal macro AUC ({headline})")
    left.set_ylim(0.4, 1.0)
    left.axhline(0.5, color="grey", lw=0.8, ls="--")
    if any(steps[n]["summary"]["external"] for n in names):
        _plot_dose(right, steps)
    else:
        _plot_single_modalities(right, steps)
    right.axhline(0.5, color="grey", lw=0.8, ls="--")
    fig.suptitle(f"REACT-KD ablation, task {results['task']} (mean ± std over seeds {results['seeds']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_dose(ax: Any, steps: dict[str, Any]) -> None:
    for name, step in steps.items():
        ext = step["summary"]["external"]
        doses = sorted(ext, key=float)
        ax.errorbar(
            [float(d) * 100 for d in doses],
            [ext[d]["mean"] for d in doses],
            yerr=[ext[d]["std"] for d in doses],
            marker="o",
            capsize=3,
            label=name,
        )
    ax.set_xscale("log")
    ax.set_xlabel("CT dose (% of full)")
    ax.set_ylabel("external macro AUC")
    ax.legend(fontsize=8)


def _plot_single_modalities(ax: Any, steps: dict[str, Any]) -> None:
    names = list(steps)
    singles = [k for k in steps[names[0]]["summary"]["internal"] if "+" not in k]
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        internal = steps[name]["summary"]["internal"]
        x = [j + (i - (len(names) - 1) / 2) * width for j in range(len(singles))]
        ax.bar(
            x,
            [internal[k]["mean"] for k in singles],
            width,
            yerr=[internal[k]["std"] for k in singles],
            capsize=2,
            label=name,
        )
    ax.set_xticks(range(len(singles)), singles)
    ax.set_ylim(0.0, 1.25)
    ax.set_yticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("internal macro AUC, one modality given")
    ax.legend(fontsize=7, ncol=3, loc="upper center")
