"""The served HCC default on a fresh cohort, CT alone, through the HTTP service. JSON.

    python -m bench.pipeline [--cases 300] [--seed 40] [--model-dir app/demo_models] \\
        [--workers 2] [--out reports/pipeline-hcc]

Each case of a fresh synthetic cohort (`reactkd synth hcc`, a seed no training or selection
used; every case has a lesion) is posted twice to an in-process service on the model
folder, as a hospital would send it, CT alone:

- ``localized``: the CT alone: the served pipeline (segmenter, then grader) answers;
- ``true_mask``: the CT with the cohort's tumour mask as ``mask``: the same grader on the
  crop the true lesion places.

The service reads its settings from the environment as `reactkd serve` does: by default
the localize-then-grade pipeline (segmenter, then the lesion grader);
``REACTKD_SERVED_SEGMENTERS='{"hcc": "none"}'`` measures a grader without localization.

Reported: macro AUC of each (for ``localized`` over the graded cases, and with the cases
answered ``gradable: false`` counted as the class prior), the share not gradable and why,
the label counts (a model that gives one label to nearly every case is a defect whatever
its AUC), both confusion matrices, and where the attention lies: for each graded answer,
the served attention map (`/v1/explain/{id}/attention?format=nifti`, on the CT's grid) per
voxel inside the true tumour over per voxel outside the true liver, both inside the
grader's field of view (the lesion grid's crop: the map is zero beyond it; 0 where the
crop misses the tumour, counted too), median over cases. `report.md` and `pipeline.json` go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from models.tasks import HCC
from training.data.readers import load_volume

CLASSES = list(HCC.classes)
PRIOR = np.array([0.25, 0.45, 0.30])  # the benchmark's grade shares (docs/benchmark.md)


def attention_ratio(attention: np.ndarray, tumour: np.ndarray, liver: np.ndarray) -> float | None:
    """Mean attention per voxel inside the tumour over that outside the liver (and tumour),
    both within the map's field of view (where it is above zero).

    0 where the field of view misses the tumour (a crop placed on a false lesion: the
    grader never looked at the tumour); None where it holds nothing outside the liver.
    """
    seen = attention > 0
    inside = seen & tumour
    outside = seen & ~liver & ~tumour
    if not outside.any():
        return None
    if not inside.any():
        return 0.0
    return float(attention[inside].mean() / max(float(attention[outside].mean()), 1e-12))


def _served_attention_ratio(
    client: Any, prediction_id: str, tumour: np.ndarray, liver: np.ndarray
) -> float | None:
    response = client.get(f"/v1/explain/{prediction_id}/attention", params={"format": "nifti"})
    if response.status_code != 200:
        return None
    with tempfile.TemporaryDirectory() as folder:  # read as the masks are: RAS+, one voxel order
        path = Path(folder) / "attention.nii.gz"
        path.write_bytes(response.content)
        attention = load_volume(path).array
    if attention.shape != tumour.shape:
        raise ValueError(f"attention on {attention.shape}, masks on {tumour.shape}: not the CT's grid")
    return attention_ratio(attention, tumour, liver)


def _post_cases(job: tuple[str, list[dict[str, str]], str]) -> list[dict[str, Any]]:
    """Worker: one in-process service, every case of `rows` posted both ways."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    model_dir, rows, root = job
    store = tempfile.mkdtemp(prefix="reactkd-pipeline-")
    settings = Settings(model_dir=Path(model_dir), store_dir=Path(store), intra_op_threads=1, _env_file=None)  # type: ignore[call-arg]
    out = []
    with TestClient(create_app(settings)) as client:
        for row in rows:
            ct = (Path(root) / row["ct"]).read_bytes()
            tumor = (Path(root) / row["tumor_mask"]).read_bytes()
            tumour_mask = load_volume(Path(root) / row["tumor_mask"]).array > 0
            liver_mask = load_volume(Path(root) / row["liver_mask"]).array > 0
            answers = {}
            for name, files in (
                ("localized", [("ct", ("ct.nii.gz", ct, "application/gzip"))]),
                (
                    "true_mask",
                    [
                        ("ct", ("ct.nii.gz", ct, "application/gzip")),
                        ("mask", ("tumor.nii.gz", tumor, "application/gzip")),
                    ],
                ),
            ):
                response = client.post("/v1/predict", data={"task": "hcc"}, files=files)
                body = response.json()
                answers[name] = {
                    "status": response.status_code,
                    "gradable": body.get("gradable"),
                    "label": body.get("label"),
                    "probabilities": body.get("probabilities"),
                    "reasons": [r["code"] for r in body.get("not_gradable") or []],
                    "mask": body.get("mask"),
                    "model": (body.get("model") or {}).get("name"),
                    "attention_ratio": (
                        _served_attention_ratio(client, body["id"], tumour_mask, liver_mask)
                        if body.get("gradable")
                        else None
                    ),
                }
            out.append({"case_id": row["case_id"], "grade": row["grade"], **answers})
    return out


def _auc(labels: np.ndarray, probs: np.ndarray) -> float | None:
    from training.metrics import macro_auc

    if len(set(labels.tolist())) < len(CLASSES):
        return None
    return float(macro_auc(labels, probs))


def _median(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.median(kept)) if kept else None


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    labels = np.array([CLASSES.index(r["grade"]) for r in rows])
    summary: dict[str, Any] = {"cases": len(rows)}
    for way in ("localized", "true_mask"):
        answers = [r[way] for r in rows]
        graded = np.array([bool(a["gradable"]) and a["probabilities"] is not None for a in answers])
        probs = np.array(
            [
                [a["probabilities"][c] for c in CLASSES] if g else PRIOR
                for a, g in zip(answers, graded, strict=True)
            ]
        )
        predicted = [a["label"] for a in answers]
        confusion = np.zeros((len(CLASSES), len(CLASSES)), dtype=int)
        for truth, label in zip(labels, predicted, strict=True):
            if label is not None:
                confusion[truth, CLASSES.index(label)] += 1
        segmenters = Counter(((a["mask"] or {}).get("model") or {}).get("name") for a in answers)
        summary[way] = {
            "model": Counter(a["model"] for a in answers).most_common(1)[0][0],
            "segmenter": segmenters.most_common(1)[0][0],
            "statuses": dict(Counter(str(a["status"]) for a in answers)),
            "not_gradable": int((~graded).sum()),
            "not_gradable_share": float((~graded).mean()),
            "reasons": dict(Counter(code for a in answers for code in a["reasons"])),
            "macro_auc_graded": _auc(labels[graded], probs[graded]) if graded.any() else None,
            "macro_auc_prior_for_not_gradable": _auc(labels, probs),
            "label_counts": dict(Counter(str(label) for label in predicted)),
            "largest_label_share": max(Counter(p for p in predicted if p).values(), default=0) / len(rows),
            "confusion_matrix": {"rows_true_cols_predicted": CLASSES, "counts": confusion.tolist()},
            "attention_ratio_median": _median([a.get("attention_ratio") for a in answers]),
            "attention_ratio_at_least_3": sum((a.get("attention_ratio") or 0) >= 3 for a in answers),
            "crop_missed_tumour": sum(a.get("attention_ratio") == 0 for a in answers),
        }
    return summary


def _ratio(way: dict[str, Any]) -> str:
    median = way.get("attention_ratio_median")
    if median is None:
        return "-"
    missed = way.get("crop_missed_tumour", 0)
    return f"{median:.2f}x ({way['attention_ratio_at_least_3']}; crop off the tumour: {missed})"


def _markdown(report: dict[str, Any]) -> str:
    s = report["summary"]
    segmenter = s["localized"]["segmenter"]
    env = "" if segmenter else 'REACTKD_SERVED_SEGMENTERS=\'{"hcc": "none"}\' '
    lines = [
        "# The served HCC pipeline on a fresh cohort, CT alone",
        "",
        f"`{env}python -m bench.pipeline --cases {s['cases']} --seed {report['seed']}`, "
        f"models `{report['model_dir']}`: "
        "every case posted to the service as CT alone (`localized`) and with its true tumour mask "
        "(`true_mask`). Synthetic cases; every one has a lesion.",
        "",
        "| | grader (segmenter) | not gradable | macro AUC (graded) | macro AUC (not gradable = prior) "
        "| label counts | attention, tumour / outside liver (median; cases >= 3x) |",
        "|---|---|---|---|---|---|---|",
    ]
    for way in ("localized", "true_mask"):
        w = s[way]
        auc = "-" if w["macro_auc_graded"] is None else f"{w['macro_auc_graded']:.3f}"
        prior = (
            "-"
            if w["macro_auc_prior_for_not_gradable"] is None
            else f"{w['macro_auc_prior_for_not_gradable']:.3f}"
        )
        lines.append(
            f"| {way} | {w['model']} ({w['segmenter'] or 'none'}) | "
            f"{w['not_gradable']} ({w['not_gradable_share']:.1%}) {w['reasons']} | "
            f"{auc} | {prior} | {w['label_counts']} | {_ratio(w)} |"
        )
    for way in ("localized", "true_mask"):
        counts = s[way]["confusion_matrix"]["counts"]
        lines += ["", f"Confusion matrix, {way} (rows: true grade; columns: answered):", ""]
        lines += ["| | " + " | ".join(CLASSES) + " |", "|---" * (len(CLASSES) + 1) + "|"]
        lines += [
            f"| {c} | " + " | ".join(str(v) for v in row) + " |"
            for c, row in zip(CLASSES, counts, strict=True)
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--seed", type=int, default=40)
    parser.add_argument("--model-dir", type=Path, default=Path("app/demo_models"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--data", type=Path, help="an existing cohort folder (default: generated in a temp folder)"
    )
    parser.add_argument("--out", type=Path, default=Path("reports/pipeline-hcc"))
    args = parser.parse_args()

    import csv

    from training.data.synth_hcc import write_hcc_cohort

    root = args.data or Path(tempfile.mkdtemp(prefix="reactkd-cohort-"))
    manifest = root / "manifest.csv"
    if not manifest.is_file():
        write_hcc_cohort(root, args.cases, seed=args.seed, workers=args.workers)
    rows = list(csv.DictReader(manifest.open()))[: args.cases]
    chunks = [rows[i :: args.workers] for i in range(args.workers)]
    # spawn: each worker starts its own ONNX Runtime and torch thread pools.
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = [
            r
            for part in pool.map(_post_cases, [(str(args.model_dir), c, str(root)) for c in chunks])
            for r in part
        ]
    report = {
        "seed": args.seed,
        "model_dir": str(args.model_dir),
        "summary": summarize(results),
        "cases": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pipeline.json").write_text(json.dumps(report, indent=2))
    (args.out / "report.md").write_text(_markdown(report))
    print(json.dumps(report["summary"], indent=2))


if __name__ == "__main__":
    main()
