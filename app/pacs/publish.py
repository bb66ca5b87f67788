"""Sending a prediction's DICOM results to the configured STOW-RS destination, and remembering it."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from app.explain.case import Localized
from app.pacs.dicomweb import destination_client
from app.pacs.results import DESCRIPTIONS, ResultObject, as_datasets, build_results
from app.pacs.schemas import ResultInstance, StoreReport
from app.settings import Settings
from app.store import Store

log = logging.getLogger("app.pacs.publish")
_REPORT = "results/stored.json"


def instance(prediction_id: str, result: ResultObject) -> ResultInstance:
    return ResultInstance(
        kind=result.kind,
        description=DESCRIPTIONS[result.kind],
        href=f"/v1/explain/{prediction_id}/dicom/{result.kind}",
        sop_class_uid=result.sop_class_uid,
        study_uid=result.study_uid,
        series_uid=result.series_uid,
        sop_instance_uid=result.sop_instance_uid,
    )


def publish(case: Localized, store: Store, settings: Settings) -> StoreReport:
    """Build (or reuse) the results and STOW them; raises the PACS problems of `PacsClient`."""
    client = destination_client(settings)
    results = build_results(case, store)
    client.store(as_datasets(results))
    report = StoreReport(
        id=case.prediction.id,
        destination=client.url,
        study_uid=results["sr"].study_uid,
        stored=[instance(case.prediction.id, r) for r in results.values()],
        stored_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    store.write_cache(case.prediction, _REPORT, report.model_dump_json().encode())
    log.info("results stored", extra={"prediction_id": case.prediction.id, "instances": len(results)})
    return report


def last_report(case: Localized, store: Store) -> StoreReport | None:
    data = store.read_cache(case.prediction, _REPORT)
    return StoreReport.model_validate(json.loads(data)) if data is not None else None
