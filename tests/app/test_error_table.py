"""Every problem type is raised from a typed error and documented in one table
(`docs/errors.md`); every kind of input contract error maps to a problem by its class."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import models.contract
import models.dicom
from app import errors
from models.contract import ContractError

DOC = Path(__file__).resolve().parents[2] / "docs" / "errors.md"
ROW = re.compile(r"^\| (\d{3}) \| `([a-z-]+)` \| `(\w+)` \|([^|]*)\|", re.MULTILINE)


def _subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    return found.union(*(_subclasses(sub) for sub in found)) if found else found


def _doc_rows() -> dict[str, tuple[int, str, set[str]]]:
    rows = {}
    for status, slug, exception, contract in ROW.findall(DOC.read_text()):
        rows[slug] = (int(status), exception, set(re.findall(r"`(\w+)`", contract)))
    return rows


def test_every_problem_type_is_in_the_table_with_its_status_and_exception() -> None:
    rows = _doc_rows()
    problems = {cls.slug: cls for cls in _subclasses(errors.ProblemError)}
    assert set(rows) == set(problems), set(rows) ^ set(problems)
    for slug, cls in problems.items():
        assert rows[slug][:2] == (cls.status, cls.__name__), slug


def test_every_contract_error_class_maps_to_the_problem_the_table_names() -> None:
    defined = {
        cls
        for module in (models.contract, models.dicom)
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, ContractError)
    }
    rows = _doc_rows()
    for cls in defined:
        problem = errors.contract_problem(_instance(cls))
        assert problem.field == "ct" and problem.detail == "why", cls
        # Its own row or its nearest documented base's names it.
        named = {slug for slug, (_, _, contract) in rows.items() if cls.__name__ in contract}
        nearest = next(base for base in cls.__mro__ if base in errors.CONTRACT_PROBLEMS)
        assert named or nearest is not cls, f"{cls.__name__} is not in docs/errors.md"
        if cls in errors.CONTRACT_PROBLEMS:
            assert named == {problem.slug}, cls


def _instance(cls: type[ContractError]) -> ContractError:
    if cls is models.contract.NotAVolumeError:
        return cls("ct", "why", slices=1, extent_mm=3.0)  # type: ignore[call-arg]
    return cls("ct", "why")


@pytest.mark.parametrize(
    ("error", "slug"),
    [
        (models.contract.NonFiniteError("t1", "why"), "non-finite-voxels"),
        (models.dicom.PixelDataError("PixelData", "why"), "corrupt-pixel-data"),
        (models.dicom.DicomGeometryError("ImageOrientationPatient", "why"), "invalid-study"),
        (models.contract.MissingMaskError("mask", "why"), "missing-field"),
    ],
)
def test_a_subclass_takes_its_own_problem_and_a_field_override(error: ContractError, slug: str) -> None:
    problem = errors.contract_problem(error, "ct: why", field="ct")
    assert (problem.slug, problem.detail, problem.field) == (slug, "ct: why", "ct")
