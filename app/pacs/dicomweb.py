"""A DICOMweb client for the service: find and fetch a study (QIDO-RS, WADO-RS), store results (STOW-RS).

A thin wrapper over `dicomweb_client.DICOMwebClient` whose only job is to turn transport
and HTTP failures into the service's typed problems, so a route never answers 500 because
the PACS is down: connection refused -> `PacsUnreachableError` (502), no answer in time ->
`PacsTimeoutError` (504), an error status -> `PacsError` (502) or `StudyNotFoundError` (404).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from app.errors import (
    PacsError,
    PacsNotConfiguredError,
    PacsTimeoutError,
    PacsUnreachableError,
    StudyNotFoundError,
)
from app.identity import MANUFACTURER
from app.settings import Settings

log = logging.getLogger("app.pacs")

# Series of these modalities are images a task may use, or segmentations that may be its mask
# (`app.ingest.seg`); others (SR, captures, parametric maps) are not fetched.
IMAGE_MODALITIES = frozenset({"CT", "PT", "MR"})
FETCHED_MODALITIES = IMAGE_MODALITIES | {"SEG"}
_SERIES_UID, _MODALITY, _MANUFACTURER = "0020000E", "00080060", "00080070"


@dataclass(frozen=True)
class SeriesRef:
    """A series found by QIDO-RS."""

    series_uid: str
    modality: str
    manufacturer: str = ""


def _value(attributes: dict, tag: str) -> str:
    values = attributes.get(tag, {}).get("Value") or [""]
    return str(values[0])


def _may_be_input(series: SeriesRef) -> bool:
    """An image, or a SEG that may be the study's mask: not one of this service's results
    (a SEG of regions per stored prediction; each would be fetched only to be ignored)."""
    return series.modality in FETCHED_MODALITIES and series.manufacturer != MANUFACTURER


class PacsClient:
    """One DICOMweb server (a base URL ending in the DICOMweb root, e.g. `.../dicom-web`)."""

    def __init__(self, url: str, settings: Settings) -> None:
        self.url = url.rstrip("/")
        session = requests.Session()
        if settings.dicomweb_username is not None and settings.dicomweb_password is not None:
            session.auth = (settings.dicomweb_username, settings.dicomweb_password.get_secret_value())
        if settings.dicomweb_token is not None:
            session.headers["Authorization"] = f"Bearer {settings.dicomweb_token.get_secret_value()}"
        self._client = DICOMwebClient(url=self.url, session=session, timeout=settings.dicomweb_timeout_s)
        # dicomweb-client retries every exception five times with exponential back-off (about
        # 30 s for a refused connection); a request here fails fast and the client may retry.
        self._client.set_http_retry_params(retry=False)

    @contextlib.contextmanager
    def _problems(self, what: str, field: str) -> Iterator[None]:
        """Translate what `requests` raises into problems that name the server and the step."""
        try:
            yield
        except requests.Timeout:
            raise PacsTimeoutError(f"{what}: {self.url} did not answer in time", field=field) from None
        except requests.ConnectionError as exc:
            raise PacsUnreachableError(
                f"{what}: cannot connect to {self.url} ({type(exc).__name__}); check REACTKD_DICOMWEB_URL "
                "and that the PACS is running",
                field=field,
            ) from None
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status == 404:
                raise StudyNotFoundError(f"{what}: {self.url} answered 404", field=field) from None
            raise PacsError(f"{what}: {self.url} answered HTTP {status}", field=field) from None
        except requests.RequestException as exc:
            raise PacsError(f"{what}: {type(exc).__name__}: {exc}", field=field) from None
        except InvalidDicomError as exc:
            # e.g. instances stored without the Part-10 preamble and header, sent back as stored.
            raise PacsError(
                f"{what}: {self.url} sent a part that is not a DICOM Part-10 file ({exc})", field=field
            ) from None

    def find_series(self, study_uid: str) -> list[SeriesRef]:
        """Every series of a study (QIDO-RS); `StudyNotFoundError` when there is none."""
        with self._problems(f"searching study {study_uid}", "study_uid"):
            found = self._client.search_for_series(study_instance_uid=study_uid, fields=["Manufacturer"])
        if not found:
            raise StudyNotFoundError(
                f"the PACS at {self.url} has no study {study_uid!r}; check the Study Instance UID",
                field="study_uid",
            )
        return [
            SeriesRef(_value(item, _SERIES_UID), _value(item, _MODALITY).upper(), _value(item, _MANUFACTURER))
            for item in found
        ]

    def fetch_study(self, study_uid: str, series_uids: Sequence[str] = ()) -> list[Dataset]:
        """The instances of the study's image and SEG series, or of `series_uids` only (WADO-RS)."""
        available = self.find_series(study_uid)
        known = {s.series_uid for s in available}
        unknown = [uid for uid in series_uids if uid not in known]
        if unknown:
            raise StudyNotFoundError(
                f"study {study_uid!r} has no series {unknown[0]!r} ({len(known)} series found)",
                field="series_uids",
            )
        wanted = list(series_uids) or [s.series_uid for s in available if _may_be_input(s)]
        if not series_uids and not any(s.modality in IMAGE_MODALITIES for s in available):
            modalities = sorted({s.modality for s in available})
            raise StudyNotFoundError(
                f"study {study_uid!r} has no CT, PT or MR series (modalities: {modalities})",
                field="study_uid",
            )
        datasets: list[Dataset] = []
        for series_uid in wanted:
            with self._problems(f"retrieving series {series_uid}", "series_uids"):
                datasets.extend(self._client.retrieve_series(study_uid, series_uid))
        log.info("fetched study", extra={"series": len(wanted), "instances": len(datasets)})
        return datasets

    def store(self, datasets: Sequence[Dataset]) -> None:
        """Send `datasets` (STOW-RS); a response listing failed instances is an error."""
        with self._problems("storing results", "destination"):
            answer = self._client.store_instances(list(datasets))
        failed = answer.get("FailedSOPSequence") if answer is not None else None
        if failed:
            reasons = sorted({str(item.get("FailureReason", "?")) for item in failed})
            raise PacsError(
                f"the PACS at {self.url} refused {len(failed)} of {len(datasets)} instances "
                f"(failure reasons {reasons})",
                field="destination",
            )


def source_client(settings: Settings) -> PacsClient:
    """The client studies are fetched from."""
    if not settings.dicomweb_url:
        raise PacsNotConfiguredError(
            "this service has no DICOMweb server configured (REACTKD_DICOMWEB_URL); upload the "
            "study's files instead of sending `study_uid`",
            field="study_uid",
        )
    return PacsClient(settings.dicomweb_url, settings)


def destination_client(settings: Settings) -> PacsClient:
    """The client results are stored to."""
    if not settings.dicomweb_stow_url:
        raise PacsNotConfiguredError(
            "no STOW-RS destination is configured (REACTKD_DICOMWEB_STOW_URL); download the results "
            "from /v1/explain/{id}/dicom/{kind} instead",
            field="destination",
        )
    return PacsClient(settings.dicomweb_stow_url, settings)
