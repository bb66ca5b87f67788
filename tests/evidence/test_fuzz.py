"""Property-based API fuzzing with schemathesis against the app in-process: no 5xx, ever.

Every operation of the app's own OpenAPI schema is called with requests generated from
that schema (Hypothesis strategies built by schemathesis), over ASGI, on the shipped demo
models, a temporary store and auth off. Two things make the fuzzing reach past the 404s
and 422s a schema alone leads to:

- `POST /v1/predict` reads its multipart form itself (which fields exist depends on the
  task), so the published schema has no request body; the test adds the form the design
  documents (`task`, one binary field per modality, `study`, `mask`), so the fuzzer sends
  forms, and in a share of the examples swaps in a real CT (NIfTI or a zipped DICOM series).
- Routes under `/v1/explain/{id}` and `/v1/predictions/{id}` take a random id in some
  examples and, in the others, the id of a real prediction made before the run (graded on
  the client's mask from NIfTI and from DICOM, so the DICOM result routes have something to
  serve; and one localized by the segmenter), so slice indices, planes, formats and methods
  are fuzzed on real data.

The property is: no response is a 5xx, except a 503 that carries Retry-After (the
concurrency gate) and the typed problems listed in `DELIBERATE_5XX`; every error is
problem+json.

Bounded: `EXAMPLES` per operation, derandomized so CI sees the same cases on every run, a
Hypothesis deadline per example and a pytest timeout overall; the test counts the calls it
made, so it cannot pass by calling nothing. To fuzz longer and with fresh cases:

    REACTKD_FUZZ_EXAMPLES=200 REACTKD_FUZZ_RANDOM=1 python -m pytest -s tests/evidence/test_fuzz.py
"""

from __future__ import annotations

import collections
import copy
import gzip
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.generation.modes import GenerationMode

from app.main import create_app
from bench.predict import dicom_zip
from models.contract import Volume
from models.tasks import TASKS

from .evidence_helpers import DEMO_MODELS, make_settings
from .server import ct_nifti, lesion_mask_nifti

EXAMPLES = int(os.environ.get("REACTKD_FUZZ_EXAMPLES", "25"))
"""Generated examples per operation (the explicit schema examples come on top)."""
MIN_CALLS = 200
"""Fewer calls than this over all operations would mean the fuzzer was not really running."""
DELIBERATE_5XX = {(501, "pacs-not-configured")}
"""5xx answers that are a typed problem by design, not a failure: storing results in a PACS
on a service with no DICOMweb server configured (this test configures none) is 501."""
SLOW_EXPLANATIONS = {"integrated_gradients", "occlusion"}
"""Attribution methods that take seconds each on CPU: fuzzed on random ids only (the
explanation tests in tests/app cover them on real predictions)."""


def _dicom_zip(nifti: bytes) -> bytes:
    """The generated CT of `ct_nifti` as a zipped DICOM series."""
    image = nib.Nifti1Image.from_bytes(gzip.decompress(nifti))
    return dicom_zip(Volume(np.asarray(image.dataobj, np.float32), image.affine))


def with_predict_form(published: dict[str, Any]) -> dict[str, Any]:
    """The app's schema plus the multipart form `POST /v1/predict` reads (see DESIGN.md)."""
    schema = copy.deepcopy(published)
    modalities = sorted({m for task in TASKS.values() for m in task.modalities})
    binary = {"type": "string", "format": "binary"}
    form = {
        "type": "object",
        "properties": {
            "task": {"anyOf": [{"enum": sorted(TASKS)}, {"type": "string"}]},
            **{name: binary for name in (*modalities, "study", "mask")},
        },
        "additionalProperties": False,
    }
    schema["paths"]["/v1/predict"]["post"]["requestBody"] = {
        "required": True,
        "content": {"multipart/form-data": {"schema": form}},
    }
    return schema


@dataclass
class Seeded:
    app: FastAPI
    ids: list[str]
    nifti: bytes
    dicom: bytes


@dataclass
class Tally:
    calls: collections.Counter = field(default_factory=collections.Counter)
    by_operation: dict[str, collections.Counter] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )
    statuses: collections.Counter = field(default_factory=collections.Counter)
    server_errors: list[str] = field(default_factory=list)
    not_problems: list[str] = field(default_factory=list)
    deliberate: collections.Counter = field(default_factory=collections.Counter)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    store = tmp_path_factory.mktemp("fuzz-store")
    app = create_app(make_settings(DEMO_MODELS, store, max_concurrent_inferences=2))
    nifti = ct_nifti()
    dicom = _dicom_zip(nifti)
    mask = ("mask.nii.gz", lesion_mask_nifti())
    ids = []
    with TestClient(app) as client:
        # Graded with the client's mask (whatever the shipped segmenter makes of this toy CT),
        # from NIfTI and from DICOM; and once as the segmenter sees it, graded or not.
        seeds = (("ct.nii.gz", nifti, True), ("ct.zip", dicom, True), ("ct.nii.gz", nifti, False))
        for name, data, with_mask in seeds:
            files = [("ct", (name, data)), *([("mask", mask)] if with_mask else [])]
            response = client.post("/v1/predict", data={"task": "hcc"}, files=files)
            assert response.status_code == 200, response.text[:500]
            assert response.json()["gradable"] or not with_mask, response.text[:500]
            ids.append(response.json()["id"])
    # The store is on disk: the lifespan schemathesis starts over ASGI opens the same one.
    yield Seeded(app, ids, nifti, dicom)


def _cases(operation: Any) -> st.SearchStrategy:
    """Requests that fit the schema, and (where the operation has inputs) requests that break it."""
    positive = operation.as_strategy(GenerationMode.POSITIVE)
    try:
        return st.one_of(positive, operation.as_strategy(GenerationMode.NEGATIVE))
    except Exception:  # schemathesis finds nothing to break (no parameters, no body)
        return positive


def _header(response: Any, name: str) -> str:
    """One header of a schemathesis response (its headers map lower-case names to lists)."""
    values = {key.lower(): value for key, value in response.headers.items()}.get(name, [])
    return values[0] if values else ""


def _problem_type(response: Any) -> str:
    try:
        return str(response.json().get("type", "")).rsplit("/", 1)[-1]
    except ValueError:
        return ""


def _check(tally: Tally, label: str, case: Any, response: Any) -> None:
    tally.calls[label] += 1
    tally.statuses[response.status_code] += 1
    tally.by_operation[label][response.status_code] += 1
    if os.environ.get("REACTKD_FUZZ_VERBOSE"):
        print(label, case.path_parameters, case.query, response.status_code, response.content[:160])
    status = response.status_code
    body = response.content[:300].decode("utf-8", "replace")
    where = f"{label} path={case.path_parameters} query={case.query} -> {status} {body}"
    if status >= 500:
        slug = _problem_type(response)
        if (status, slug) in DELIBERATE_5XX:
            tally.deliberate[f"{status} {slug}"] += 1
        elif not (status == 503 and _header(response, "retry-after")):
            tally.server_errors.append(where)
    if status >= 400 and not _header(response, "content-type").startswith("application/problem+json"):
        tally.not_problems.append(where)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fuzzing_every_operation_gives_no_5xx(seeded: Seeded) -> None:
    schema = schemathesis.openapi.from_dict(with_predict_form(seeded.app.openapi()))
    schema.app = seeded.app  # call the app in-process over ASGI, as `from_asgi` does
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10, [op.label for op in operations]
    tally = Tally()
    fuzz_settings = settings(
        max_examples=EXAMPLES,
        deadline=timedelta(seconds=30),
        derandomize=not os.environ.get("REACTKD_FUZZ_RANDOM"),
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    real = st.sampled_from(seeded.ids)
    # A real CT (alone, or beside the fuzzed PET and mask fields) in 4 of 6 predict examples.
    real_ct = {"nifti": seeded.nifti, "dicom": seeded.dicom}
    uploads = st.sampled_from([None, None, "nifti", "dicom", "nifti+fuzz", "dicom+fuzz"])

    for operation in operations:

        @fuzz_settings
        @given(case=_cases(operation), real_id=st.one_of(st.none(), real), upload=uploads)
        def fuzz(case: Any, real_id: str | None, upload: str | None) -> None:
            if real_id and "prediction_id" in (case.path_parameters or {}):
                slow = (case.query or {}).get("method") in SLOW_EXPLANATIONS
                if not slow:
                    case.path_parameters["prediction_id"] = real_id
            if upload and isinstance(case.body, dict):
                kind, _, fuzz_rest = upload.partition("+")
                extras = {k: v for k, v in case.body.items() if k in ("pet_fdg", "pet_act", "mask")}
                case.body = {"task": "hcc", "ct": real_ct[kind], **(extras if fuzz_rest else {})}
            _check(tally, operation.label, case, case.call())  # noqa: B023

        fuzz()

    print(
        f"\nschemathesis: {sum(tally.calls.values())} calls over {len(tally.calls)} operations,"
        f" statuses {dict(sorted(tally.statuses.items()))}, deliberate 5xx {dict(tally.deliberate)}"
    )
    for label, count in sorted(tally.calls.items()):
        print(f"  {count:4d}  {label}  {dict(sorted(tally.by_operation[label].items()))}")
    assert tally.server_errors == [], "\n".join(tally.server_errors[:10])
    assert tally.not_problems == [], "\n".join(tally.not_problems[:10])
    assert set(tally.calls) == {op.label for op in operations}, "an operation was never called"
    assert sum(tally.calls.values()) >= MIN_CALLS
    # Not only errors: fuzzed predictions succeed, and explanations of real ones are served.
    for label in ("POST /v1/predict", "GET /v1/explain/{prediction_id}/attention"):
        assert tally.by_operation[label][200] > 0, (label, tally.by_operation[label])


def test_the_added_predict_form_names_every_modality() -> None:
    schema = with_predict_form({"paths": {"/v1/predict": {"post": {}}}})
    form = schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]
    names = set(form["schema"]["properties"])
    assert {"task", "study", "mask", "ct", "pet_fdg", "pet_act", "t1", "t1ce", "t2", "flair"} <= names
