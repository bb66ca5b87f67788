"""Ingestion: uploaded bytes (DICOM, zips of DICOM, NIfTI) -> a `Study` of `Volume`s."""

from app.ingest.study import SeriesSource, Study, Upload, build_study

__all__ = ["SeriesSource", "Study", "Upload", "build_study"]
