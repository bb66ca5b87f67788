"""`reactkd`: the command line of REACT-KD Serve.

    reactkd synth hcc --out DIR --cases N --seed S [--external]
    reactkd synth brats --out DIR --cases N --seed S
    reactkd synth torso --out DIR --cases N --seed S    (the segmenter's broad CT cohort)
    reactkd train segmenter --task hcc --stage coarse|fine --data A/manifest.csv B/manifest.csv
    reactkd export COARSE.pt --fine FINE.pt --out DIR/NAME.onnx [--report R.json] [--lesion-threshold T.json]
    reactkd tune-segmenter DIR/NAME.onnx --data A/manifest.csv B/manifest.csv --out T.json
    reactkd segment DIR/NAME.onnx --data A/manifest.csv --out B    (a grader trains on B/manifest.csv)
    reactkd train teacher --task hcc --kind structure-function --data DIR/manifest.csv
    reactkd train student --task hcc --teachers SF.pt DOSE.pt --data DIR/manifest.csv
    reactkd export runs/NAME/best.pt --out models/NAME.onnx [--data DIR/manifest.csv] [--calibrate] [--int8]
    reactkd evaluate models/NAME.onnx --data DIR/manifest.csv --out REPORT [--dose] [--missing]
    reactkd ablation --task hcc --config BASE.yaml --data M.csv --external EXT.csv \
        --teachers SF.pt DOSE.pt --seeds 0 1 2 --out reports/ablation-hcc
    reactkd serve --host 127.0.0.1 --port 8000

Every command prints what it wrote; long ones show progress bars.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("reactkd")


def _synth(args: argparse.Namespace) -> None:
    shape: dict[str, Any] = {"shape": tuple(args.shape)} if args.shape else {}
    if args.task == "torso":
        from training.data.synth_torso import write_torso_cohort

        manifest = write_torso_cohort(
            args.out, args.cases, args.seed, fields=args.fields, workers=args.workers
        )
    elif args.task == "hcc":
        from training.data.synth_hcc import write_hcc_cohort

        manifest = write_hcc_cohort(
            args.out, args.cases, args.seed, external=args.external, workers=args.workers, **shape
        )
    else:
        from training.data.synth_brats import write_brats_cohort

        options: dict[str, Any] = {"spacing": args.spacing} if args.spacing else {}
        if args.lgg_fraction is not None:
            options["lgg_fraction"] = args.lgg_fraction
        if args.skull_stripped is not None:
            options["skull_stripped"] = args.skull_stripped
        manifest = write_brats_cohort(
            args.out, args.cases, args.seed, workers=args.workers, **shape, **options
        )
    print(f"wrote {args.cases} {args.task} cases: {manifest}")


def _train(args: argparse.Namespace) -> None:
    from training.config import load_config
    from training.train import train

    overrides = {
        "task": args.task,
        "grid": args.grid,
        "role": args.role,
        "kind": getattr(args, "kind", None),
        "data": args.data,
        "out": args.out,
        "name": args.name,
        "seed": args.seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "max_cases": args.max_cases,
        "device": args.device,
        "teachers": getattr(args, "teachers", None),
        "rgd_weight": getattr(args, "rgd_weight", None),
        "alpha": getattr(args, "alpha", None),
        "temperature": getattr(args, "temperature", None),
        "modality_dropout": getattr(args, "modality_dropout", None),
    }
    cfg = load_config(args.config, overrides)
    best = train(cfg, resume=args.resume)
    print(f"best checkpoint: {best}")


def _train_segmenter(args: argparse.Namespace) -> None:
    from training.segmenter import load_segmenter_config, train_segmenter

    overrides = {
        "task": args.task,
        "stage": args.stage,
        "data": args.data,
        "out": args.out,
        "name": args.name,
        "seed": args.seed,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "max_cases": args.max_cases,
        "device": args.device,
        "cache": args.cache,
    }
    cfg = load_segmenter_config(args.config, overrides)
    best = train_segmenter(cfg, resume=args.resume)
    print(f"best checkpoint: {best}")


def _export(args: argparse.Namespace) -> None:
    import torch

    from models.segmenter import get_segmenter_spec
    from training.export import export_model, export_segmenter
    from training.segmentation_report import card_summary

    training_data = json.loads(args.training_data) if args.training_data else None
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    if state.get("role") == "segmenter":
        if args.fine is None and "fine" in get_segmenter_spec(state["task"]).stages:
            raise ValueError("a segmenter is exported with both stages: give the fine one as --fine FINE.pt")
        report = card_summary(args.report) if args.report else None
        tuning = json.loads(args.lesion_threshold.read_text()) if args.lesion_threshold else None
        card = export_segmenter(
            state,
            args.fine,
            args.out,
            version=args.version,
            training_data=training_data,
            report=report,
            lesion_threshold=tuning,
        )
        worst = max(stage["parity"]["max_abs_logit_diff"] for stage in card["stages"].values())
        print(
            f"wrote {args.out} with its stages {sorted(card['stages'])} (ONNX Runtime vs PyTorch {worst:.1e})"
        )
        return
    card = export_model(
        args.checkpoint,
        args.out,
        version=args.version,
        training_data=training_data,
        data=args.data,
        int8=args.int8,
        calibrate=args.calibrate,
    )
    diff = card["parity"]["max_abs_logit_diff"]
    print(f"wrote {args.out} (sha256 {card['onnx_sha256'][:12]}, ONNX Runtime vs PyTorch {diff:.1e})")


def _tune_segmenter(args: argparse.Namespace) -> None:
    from models.card import parse_card
    from training.segmentation_report import tune_lesion_threshold

    tuning = tune_lesion_threshold(args.model, args.data, split=args.split, workers=args.workers)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(tuning, indent=2))
    card_path = args.model.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card.update(lesion_threshold=tuning["threshold"], lesion_threshold_tuning=tuning)
    parse_card(card, card_path.name)
    card_path.write_text(json.dumps(card, indent=2))
    for row in tuning["table"]:
        print(
            f"threshold {row['threshold']:.2f}: lesion F1 {row['lesion_f1']:.3f} (precision "
            f"{row['lesion_precision']:.2f}, recall {row['lesion_recall']:.2f}), lesion Dice "
            f"{row['lesion_dice']:.3f}, dominant lesion found {row['dominant_found']:.0%}"
        )
    chosen = f"chose {tuning['threshold']} on {tuning['cases']} {tuning['split']} cases"
    print(f"{chosen}; wrote {args.out} and {card_path}")


def _segment(args: argparse.Namespace) -> None:
    from training.predicted_masks import segment_cohort

    manifest = segment_cohort(args.model, args.data, args.out, workers=args.workers)
    with manifest.open() as f:
        sources = [row["mask_source"] for row in csv.DictReader(f)]
    print(
        f"wrote {manifest}: the segmenter's masks for {sources.count('model')} cases, the true ones "
        f"for {sources.count('truth')} where it found no lesion"
    )


def _evaluate(args: argparse.Namespace) -> None:
    from training.evaluate import evaluate_model

    card_path = args.model.with_suffix(".json")
    card = json.loads(card_path.read_text()) if args.model.suffix == ".onnx" and card_path.is_file() else {}
    if card.get("role") == "segmenter" and card.get("task") == "brats":
        from training.subregion_report import evaluate_subregions

        if args.data is None:
            raise ValueError("give the BraTS cohort to evaluate on as --data")
        report = evaluate_subregions(args.model, args.data, args.out, workers=args.workers)  # every case
        for subset, scores in report["summary"].items():
            print(subset + ": " + ", ".join(f"{name} Dice {s['median']:.3f}" for name, s in scores.items()))
        print(f"wrote {args.out / 'report.md'}")
        return
    if card.get("role") == "segmenter":
        from training.segmentation_report import evaluate_segmenter

        cohorts = dict(_cohort(c) for c in args.cohort or []) or {args.data.parent.name: args.data}
        split = None if args.split == "all" else args.split
        report = evaluate_segmenter(args.model, cohorts, args.out, split=split, workers=args.workers)
        for name, summary in report["summary"].items():
            organ, lesion = summary["organ_dice"]["median"], summary["lesion_dice"]["median"]
            print(f"{name}: organ Dice {organ}, lesion Dice {lesion}")
        print(f"wrote {args.out / 'report.md'}")
        return

    if args.data is None:
        raise ValueError("give the cohort to evaluate on as --data")
    report = evaluate_model(
        args.model, args.data, args.out, split=args.split, dose=args.dose, missing=args.missing
    )
    overall = report["overall"]
    lo, hi = overall["macro_auc_ci95"]
    print(
        f"macro AUC {overall['macro_auc']:.3f} (95% CI {lo:.3f}-{hi:.3f}), {overall['n']} cases: {args.out}"
    )


def _cohort(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep:
        raise ValueError(f"--cohort takes NAME=MANIFEST, got {text!r}")
    return name, Path(path)


def _ablation(args: argparse.Namespace) -> None:
    from training.ablation import run_ablation

    results = run_ablation(
        args.task,
        args.config,
        args.data,
        args.teachers,
        args.seeds,
        args.out,
        external=args.external,
        command=" ".join(["reactkd", *sys.argv[1:]]),
        test_data=args.test_data,
        trained_runs=args.trained_runs,
        only_steps=args.steps,
    )
    for name, target in results.get("targets", {}).items():
        verdict = ("met" if target["met"] else "NOT met") if "met" in target else f"{target}"
        print(f"{name}: {verdict}")
    print(f"wrote {args.out / 'ablation.md'}")


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    workers = args.workers or int(os.environ.get("REACTKD_WORKERS") or 1)
    if workers > 1:
        # Each worker process loads the models and admits its own share of the requests
        # (REACTKD_WORKERS tells it how many share the memory budget); their Prometheus
        # counters go to files in one folder that /metrics adds up (prometheus-client's
        # multiprocess mode), emptied first so a restart does not count old requests.
        os.environ["REACTKD_WORKERS"] = str(workers)
        folder = Path(
            os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="reactkd-metrics-")
        )
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.db"):
            stale.unlink()
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    # The service is named by import string: training never imports app (DESIGN.md).
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        workers=workers,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reactkd", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser("synth", help="write a synthetic cohort in a real dataset layout")
    synth.add_argument("task", choices=["hcc", "brats", "torso"])
    synth.add_argument("--out", type=Path, required=True)
    synth.add_argument("--cases", type=int, required=True)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--external", action="store_true", help="HCC: the shifted external CT-only cohort")
    synth.add_argument(
        "--fields", nargs="+", help="torso: only these fields of view, in turn (e.g. chest pelvis head)"
    )
    synth.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    synth.add_argument(
        "--shape", type=int, nargs=3, metavar=("X", "Y", "Z"), help="voxels per axis (smaller: quick tests)"
    )
    synth.add_argument("--spacing", type=float, help="BraTS: isotropic voxel size in mm (default 1)")
    synth.add_argument(
        "--lgg-fraction",
        type=float,
        help="BraTS: the chance that a case is LGG (default BraTS 2019's 1 in 4.4; 0.5 balanced)",
    )
    synth.add_argument(
        "--skull-stripped",
        type=float,
        help="BraTS: the chance that a case is skull-stripped, as real BraTS scans are (default 0)",
    )
    synth.set_defaults(func=_synth)

    train = commands.add_parser("train", help="train a teacher or distil a student")
    roles = train.add_subparsers(dest="role", required=True)
    for role in ("teacher", "student"):
        sub = roles.add_parser(role)
        sub.add_argument("--config", type=Path, help="YAML or TOML run config; flags override it")
        sub.add_argument("--task", choices=["hcc", "brats"])
        sub.add_argument("--grid", choices=["whole", "lesion"], help="lesion: a cube on the lesion mask")
        sub.add_argument("--data", type=Path, help="HCC manifest.csv or BraTS root")
        sub.add_argument("--out", type=Path, help="runs folder (default runs/)")
        sub.add_argument("--name", help="run name (default TASK-KIND-sSEED)")
        sub.add_argument("--seed", type=int)
        sub.add_argument("--epochs", type=int)
        sub.add_argument("--batch-size", type=int)
        sub.add_argument("--lr", type=float)
        sub.add_argument("--max-cases", type=int)
        sub.add_argument("--device", choices=["auto", "cpu", "cuda"])
        sub.add_argument("--resume", action="store_true", help="continue from the run's last.pt")
        if role == "teacher":
            sub.add_argument("--kind", help="structure-function | dose-aware (hcc), hybrid (brats)")
        else:
            sub.add_argument("--teachers", type=Path, nargs="*", help="teacher checkpoints")
            sub.add_argument("--alpha", type=float)
            sub.add_argument("--temperature", type=float)
            sub.add_argument("--rgd-weight", type=float)
            sub.add_argument("--modality-dropout", type=float)
        sub.set_defaults(func=_train)
    segmenter = roles.add_parser(
        "segmenter", help="the segmenter: HCC liver and lesion (U-Net), BraTS sub-regions (SegResNet)"
    )
    segmenter.add_argument("--config", type=Path, help="YAML run config; flags override it")
    segmenter.add_argument("--task", choices=["hcc", "brats"])
    segmenter.add_argument(
        "--stage", choices=["coarse", "fine"], help="HCC's cascade stage (default coarse; BraTS has one)"
    )
    segmenter.add_argument(
        "--data", type=Path, nargs="+", help="cohorts with masks: HCC manifests, BraTS folders"
    )
    segmenter.add_argument("--out", type=Path, help="runs folder (default runs/)")
    segmenter.add_argument("--name", help="run name (default TASK-segmenter-sSEED)")
    segmenter.add_argument("--cache", type=Path, help="folder of prepared cases (default RUN/cache)")
    segmenter.add_argument("--seed", type=int)
    segmenter.add_argument("--steps", type=int)
    segmenter.add_argument("--batch-size", type=int)
    segmenter.add_argument("--lr", type=float)
    segmenter.add_argument("--max-cases", type=int)
    segmenter.add_argument("--device", choices=["auto", "cpu", "cuda"])
    segmenter.add_argument("--resume", action="store_true", help="continue from the run's last.pt")
    segmenter.set_defaults(func=_train_segmenter)

    export = commands.add_parser("export", help="ONNX + model card, parity checked")
    export.add_argument("checkpoint", type=Path)
    export.add_argument("--out", type=Path, required=True, help="NAME.onnx")
    export.add_argument("--version", default="0.1.0")
    export.add_argument("--fine", type=Path, help="a segmenter: the checkpoint of its fine stage")
    export.add_argument("--report", type=Path, help="a segmenter: its evaluation report.json, for the card")
    export.add_argument(
        "--lesion-threshold", type=Path, help="a segmenter: the tune-segmenter JSON whose threshold it takes"
    )
    export.add_argument("--data", type=Path, help="cohort: test metrics and class prototypes for the card")
    export.add_argument(
        "--int8", action="store_true", help="also write NAME.int8.onnx and measure its accuracy"
    )
    export.add_argument("--training-data", help='JSON for the card, e.g. {"synthetic": true, ...}')
    export.add_argument(
        "--calibrate",
        action="store_true",
        help="fit a temperature and per-class biases on the val split of --data, folded into the last layer",
    )
    export.set_defaults(func=_export)

    tune = commands.add_parser(
        "tune-segmenter", help="choose an exported segmenter's lesion threshold on validation cases"
    )
    tune.add_argument("model", type=Path, help="NAME.onnx of a segmenter (its card is updated)")
    tune.add_argument(
        "--data", type=Path, nargs="+", required=True, help="manifests whose split cases it uses"
    )
    tune.add_argument("--split", default="val")
    tune.add_argument("--out", type=Path, required=True, help="JSON of the choice and its table")
    tune.add_argument("--workers", type=int, default=None)
    tune.set_defaults(func=_tune_segmenter)

    seg = commands.add_parser(
        "segment", help="a cohort's masks as an exported segmenter draws them, as a new manifest"
    )
    seg.add_argument("model", type=Path, help="NAME.onnx of a segmenter")
    seg.add_argument("--data", type=Path, required=True, help="HCC manifest.csv")
    seg.add_argument("--out", type=Path, required=True, help="folder of the masks and their manifest.csv")
    seg.add_argument("--workers", type=int, default=None)
    seg.set_defaults(func=_segment)

    evaluate = commands.add_parser("evaluate", help="metrics, plots and a report for a .pt or .onnx model")
    evaluate.add_argument("model", type=Path)
    evaluate.add_argument("--data", type=Path, help="HCC manifest.csv or BraTS root")
    evaluate.add_argument(
        "--cohort", action="append", metavar="NAME=MANIFEST", help="a segmenter: a named cohort (repeatable)"
    )
    evaluate.add_argument(
        "--workers", type=int, default=None, help="a segmenter: processes (default: all cores)"
    )
    evaluate.add_argument("--out", type=Path, required=True, help="report folder")
    evaluate.add_argument(
        "--split", default="test", help="which split to evaluate (default test; all: every case)"
    )
    evaluate.add_argument("--dose", action="store_true", help="sweep the cohort's CT dose levels")
    evaluate.add_argument("--missing", action="store_true", help="sweep the allowed modality subsets")
    evaluate.set_defaults(func=_evaluate)

    ablation = commands.add_parser("ablation", help="students with one part of the method added per step")
    ablation.add_argument("--task", choices=["hcc", "brats"], required=True)
    ablation.add_argument("--config", type=Path, required=True, help="student run config of the full method")
    ablation.add_argument("--data", type=Path, required=True, help="HCC manifest.csv or BraTS root")
    ablation.add_argument("--external", type=Path, help="external cohort manifest (per-dose CT rows)")
    ablation.add_argument("--teachers", type=Path, nargs="+", required=True, help="PET/CT [and dose-aware]")
    ablation.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ablation.add_argument("--out", type=Path, required=True, help="report folder (runs/ inside)")
    ablation.add_argument(
        "--test-data",
        type=Path,
        help="judge on every labelled case of this cohort, not the test split of --data",
    )
    ablation.add_argument(
        "--steps",
        nargs="+",
        help="train and judge only these steps of the ladder (scratch and the full method are always kept)",
    )
    ablation.add_argument(
        "--trained-runs",
        type=Path,
        help="judge the finished runs of this earlier ablation's runs/ (train nothing)",
    )
    ablation.set_defaults(func=_ablation)

    serve = commands.add_parser("serve", help="start the HTTP service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="info")
    serve.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes serving requests, each with its own models (default: REACTKD_WORKERS, else 1)",
    )
    serve.set_defaults(func=_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as err:
        log.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
