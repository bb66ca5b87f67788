"""Public schemas of the PACS routes: a prediction by `study_uid`, result instances, a store report."""

from __future__ import annotations

import re

from pydantic import BaseModel, Field, field_validator

# DICOM UI: dot-separated digit groups, at most 64 characters (PS3.5 9.1). Checked before a UID
# is put into a DICOMweb URL path.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def check_uid(value: str) -> str:
    value = value.strip()
    if len(value) > 64 or not _UID.match(value):
        raise ValueError(f"{value[:80]!r} is not a DICOM UID (digits and dots, at most 64 characters)")
    return value


class StudyRequest(BaseModel):
    """`POST /v1/predict` as JSON: a study to fetch from the configured DICOMweb server."""

    task: str
    study_uid: str = Field(description="Study Instance UID in the PACS")
    series_uids: list[str] = Field(
        default_factory=list, description="only these series (default: every CT, PT and MR series)"
    )

    @field_validator("study_uid")
    @classmethod
    def _check_study(cls, value: str) -> str:
        return check_uid(value)

    @field_validator("series_uids")
    @classmethod
    def _check_series(cls, values: list[str]) -> list[str]:
        return [check_uid(v) for v in values]


class ResultInstance(BaseModel):
    kind: str
    description: str
    href: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    sop_instance_uid: str


class ResultIndex(BaseModel):
    id: str
    results: list[ResultInstance]
    stored: StoreReport | None = None


class StoreReport(BaseModel):
    id: str
    destination: str
    study_uid: str
    stored: list[ResultInstance]
    stored_at: str


ResultIndex.model_rebuild()
