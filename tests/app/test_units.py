"""Settings, store, inference gate, decision rule, series assignment and SUV conversion."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag

from app.admission import InferenceGate
from app.errors import BusyError, UnknownIdError
from app.ingest.assign import ct_phase_rank, guess_modality
from app.ingest.pet import suv_factor
from app.runtime import ServedModel
from app.settings import Settings
from app.store import Store, new_id


def test_settings_split_keys_and_refuse_open_production(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("REACTKD_API_KEYS", "a, b,")
    assert Settings(_env_file=None).api_keys == ["a", "b"]  # type: ignore[call-arg]
    monkeypatch.delenv("REACTKD_API_KEYS")
    for value, served in (('{"hcc": "hcc_lesion_student"}', {"hcc": "hcc_lesion_student"}), ("", {})):
        monkeypatch.setenv("REACTKD_SERVED_MODELS", value)  # "": docker compose's unset variable
        assert Settings(_env_file=None).served_models == served  # type: ignore[call-arg]
    monkeypatch.setenv("REACTKD_SERVED_MODELS", "hcc")
    with pytest.raises(ValidationError, match="served_models"):
        Settings(_env_file=None)  # type: ignore[call-arg]
    monkeypatch.delenv("REACTKD_SERVED_MODELS")
    with pytest.raises(ValidationError, match="REACTKD_API_KEYS must be set"):
        Settings(_env_file=None, environment="production")  # type: ignore[call-arg]


def test_store_save_get_and_purge(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = Store(tmp_path)
    pid = new_id()
    saved = store.save(pid, task="hcc", model="m", response={"id": pid}, files={"a/b.bin": b"x"})
    assert store.get(pid).response == {"id": pid} and store.read(saved, "a/b.bin") == b"x"
    orphan = store.files / ".tmp-crashed"
    orphan.mkdir()
    assert store.purge(30, now=time.time() + 31 * 86400) == 1
    assert not saved.folder.exists() and not orphan.exists()
    with pytest.raises(UnknownIdError):
        store.get(pid)


def test_gate_refuses_when_full() -> None:
    async def scenario() -> None:
        gate = InferenceGate(1)
        slow = asyncio.create_task(gate.run(time.sleep, 0.3, timeout=5))
        await asyncio.sleep(0.05)
        with pytest.raises(BusyError) as info:
            await gate.run(time.sleep, 0, timeout=5)
        assert info.value.headers["Retry-After"]
        await slow

    asyncio.run(scenario())


def _pet(tracer: str) -> Dataset:
    ds = Dataset()
    ds.Modality = "PT"
    item = Dataset()
    item.Radiopharmaceutical = tracer
    ds.RadiopharmaceuticalInformationSequence = DicomSequence([item])
    return ds


@pytest.mark.parametrize(
    ("modality", "description", "tracer", "expected"),
    [
        ("CT", "", "", "ct"),
        ("PT", "", "Fluorodeoxyglucose", "pet_fdg"),
        ("PT", "", "11C-acetate", "pet_act"),
        ("MR", "AX T1 POST GD", "", "t1ce"),
        ("MR", "t1_mprage", "", "t1"),
        ("MR", "T2 TSE", "", "t2"),
        ("MR", "T2 FLAIR", "", "flair"),
        # Named before contrast, not after: "contrast" alone would read as post-contrast.
        ("MR", "T1 pre-contrast", "", "t1"),
        ("MR", "T1 without contrast", "", "t1"),
        ("MR", "AX T1 PRE GD", "", "t1"),
        ("MR", "T1 post-op", "", "t1"),
        ("MR", "T1 FLAIR AX", "", "t1"),
        # Not structural sequences, whatever T1 or T2 they name.
        ("MR", "T2* GRE", "", None),
        ("MR", "DWI b1000", "", None),
        ("MR", "T1 perfusion DSC", "", None),
        ("MR", "T2 mapping", "", None),
        ("SR", "", "", None),
    ],
)
def test_guess_modality(modality, description, tracer, expected) -> None:  # type: ignore[no-untyped-def]
    ds = _pet(tracer) if tracer else Dataset()
    ds.Modality = modality
    ds.SeriesDescription = description
    guess = guess_modality(ds)
    assert guess.modality == expected and guess.reason


@pytest.mark.parametrize(
    ("description", "rank"),
    [
        ("ABD PORTAL VENOUS 5mm", 2),
        ("Liver PV phase", 2),
        ("Venous phase", 2),
        ("Delayed venous", 0),
        ("ABDOMEN 70s", 2),
        ("ARTERIAL PHASE", 0),
        ("Delayed 3 min", 0),
        ("Non-contrast abdomen", 0),
        ("ABDOMEN 5mm", 1),
        ("", 1),
    ],
)
def test_ct_phase_rank(description, rank) -> None:  # type: ignore[no-untyped-def]
    ds = Dataset()
    ds.SeriesDescription = description
    assert ct_phase_rank(ds)[0] == rank


def test_suv_factor_decay_and_missing_tags() -> None:
    ds = _pet("FDG")
    ds.Units = "BQML"
    ds.PatientWeight = 70
    ds.SeriesTime = "110000"
    item = ds.RadiopharmaceuticalInformationSequence[0]
    item.RadionuclideTotalDose = 370e6
    item.RadionuclideHalfLife = 6586.2
    item.RadiopharmaceuticalStartTime = "100000"
    factor, note = suv_factor(ds)
    decayed = 370e6 * np.exp(-np.log(2) * 3600 / 6586.2)
    assert factor == pytest.approx(70000 / decayed) and "SUVbw" in note
    del ds.PatientWeight
    factor, note = suv_factor(ds)
    assert factor is None and "NOT converted" in note


@pytest.mark.parametrize(
    ("keyword", "value", "reason"),
    [
        ("PatientWeight", "70kg", "malformed"),
        ("PatientWeight", "NaN", "malformed"),
        ("RadionuclideTotalDose", "-1", "malformed"),
        ("RadionuclideHalfLife", "1", "half-lives"),  # an hour of decay over a 1 s half-life
    ],
)
def test_suv_factor_refuses_header_values_no_scan_has(keyword: str, value: str, reason: str) -> None:
    ds = _pet("FDG")
    ds.Units, ds.PatientWeight, ds.SeriesTime = "BQML", 70, "110000"
    item = ds.RadiopharmaceuticalInformationSequence[0]
    item.RadionuclideTotalDose, item.RadionuclideHalfLife = 370e6, 6586.2
    item.RadiopharmaceuticalStartTime = "100000"
    target = ds if keyword == "PatientWeight" else item
    tag = Tag(keyword)  # as a sender wrote it: pydicom converts it only when read
    target[tag] = RawDataElement(tag, "DS", len(value), value.encode(), 0, True, True)
    factor, note = suv_factor(ds)
    assert factor is None and reason in note and "NOT converted" in note


def test_the_answered_class_follows_the_cards_decision_weights(tmp_path: Path) -> None:
    """argmax(p x w): a card without a decision answers the argmax; with weights chosen on
    validation, a case whose probabilities lean to the common class can answer another, by
    the weights fitted for the modalities it holds where the card has them."""
    classes = ["well", "moderate", "poor"]
    probabilities = np.array([0.35, 0.45, 0.20])
    plain = ServedModel(name="m", card={"classes": classes}, folder=tmp_path)
    assert plain.label_of(probabilities, ["ct"]) == 1
    assert plain.decision(["ct"]) is None
    decision = {
        "weights": {"well": 1.5, "moderate": 1.0, "poor": 1.2},
        # Fitted on validation with CT alone: a study holding only CT answers by these.
        "by_subset": {"ct": {"well": 1.0, "moderate": 1.0, "poor": 2.5}},
    }
    card = {"classes": classes, "modalities": ["ct", "pet_fdg"], "decision": decision}
    weighted = ServedModel(name="m", card=card, folder=tmp_path)
    assert weighted.label_of(probabilities, ["ct", "pet_fdg"]) == 0
    assert weighted.label_of(probabilities, ["ct"]) == 2
    assert weighted.decision(["ct"])["weights"] == decision["by_subset"]["ct"]  # type: ignore[index]


def test_a_segmenter_card_whose_lesion_threshold_is_no_probability_does_not_load(tmp_path: Path) -> None:
    card = {"task": "hcc", "role": "segmenter", "lesion_threshold": 2.0, "stages": {}}
    model = ServedModel(name="seg", card=card, folder=tmp_path)
    model.load(Settings(model_dir=tmp_path, store_dir=tmp_path / "store", _env_file=None))  # type: ignore[call-arg]
    assert model.status == "failed" and "lesion_threshold" in (model.reason or "")
