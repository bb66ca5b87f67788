"""Which series of a study is which modality, decided from DICOM tags, with a reason.

- Modality CT -> ``ct``; localisers (ImageType LOCALIZER) are skipped.
- Modality PT -> ``pet_fdg`` or ``pet_act`` from the radiopharmaceutical (name, code
  meanings of RadiopharmaceuticalCodeSequence and RadionuclideCodeSequence, then the
  series description): fluorodeoxyglucose/FDG vs acetate/C-11. A PET series whose
  CorrectedImage lacks ATTN (the non-attenuation-corrected copy most PET/CT studies hold)
  is skipped: its values are not quantitative.
- Modality MR -> ``flair``, ``t2``, ``t1ce``, ``t1`` from SeriesDescription/ProtocolName
  keywords; T1 counts as post-contrast with post, gd, gad, ce, +c, contrast keywords or a
  ContrastBolusAgent, unless described as before contrast (pre, non-contrast, without
  contrast, native). Diffusion, perfusion, T2* / susceptibility series and parameter maps
  are not used, whatever T1 or T2 they name; T1-FLAIR is a T1.
Several candidates for one modality: a CT described as portal-venous (the phase the HCC
models were trained on) wins over one of unknown phase, which wins over one described as
another phase (unenhanced, arterial, delayed: a multiphase liver CT holds them all, often
with equal slice counts); then the one with the most slices. The reason says which rule chose.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.dataset import Dataset

_FDG = re.compile(r"fluorodeoxyglucose|\bfdg\b|18f-?fdg|fludeoxyglucose")
_ACETATE = re.compile(r"acetate|\bc-?11\b|11c|carbon-?11")
_PORTAL_VENOUS = re.compile(r"portal|\bpv\b|\bpvp\b|\b70 ?s(ec)?\b")
_VENOUS = re.compile(r"venous")  # portal-venous unless another phase is named ("delayed venous")
_OTHER_PHASE = re.compile(
    r"arterial|\bart\b|delay|equilibrium|non-?contrast|unenhanced|\bnc\b|plain|\bpre\b|native"
)
# MR: series that are not the structural sequences a task reads, whatever T1/T2 they name.
_NOT_STRUCTURAL = re.compile(
    r"dwi|diffusion|\badc\b|\bdti\b|perfusion|\bdsc\b|\bdce\b|\bswi\b|t2\*|t2 ?star|\bgre\b|"
    r"\bmap(s|ping)?\b"
)
_PRE_CONTRAST = re.compile(
    r"\bpre\b|pre-?contrast|pre ?gd|non-?contrast|without contrast|w/o|no contrast|native|plain"
)
_CONTRAST = re.compile(r"post(?!-? ?op)|\bgd\b|gad|\bce\b|t1ce|t1c\b|\+c|\bc\+|contrast|enhanc")


# The DICOM Modality (0008,0060) of each imaging kind a task takes.
DICOM_MODALITY = {"ct": "CT", "pet": "PT", "mri": "MR"}


@dataclass(frozen=True)
class Guess:
    modality: str | None
    reason: str


def _text(ds: Dataset, *keywords: str) -> str:
    return " ".join(str(ds.get(k, "") or "") for k in keywords).lower()


def tracer_from_tags(ds: Dataset) -> Guess:
    """The PET modality the radiopharmaceutical tags name (not the free-text description)."""
    words = []
    for item in ds.get("RadiopharmaceuticalInformationSequence") or []:
        words.append(str(item.get("Radiopharmaceutical", "") or ""))
        for seq in ("RadiopharmaceuticalCodeSequence", "RadionuclideCodeSequence"):
            for code in item.get(seq) or []:
                words.append(str(code.get("CodeMeaning", "") or ""))
    tracer = " ".join(words).lower()
    if _FDG.search(tracer):
        return Guess("pet_fdg", f"PT series, radiopharmaceutical {tracer.strip()!r} is FDG")
    if _ACETATE.search(tracer):
        return Guess("pet_act", f"PT series, radiopharmaceutical {tracer.strip()!r} is 11C-acetate")
    return Guess(None, f"PT series, radiopharmaceutical {tracer.strip()!r} not recognised")


def _pet_tracer(ds: Dataset) -> Guess:
    tagged = tracer_from_tags(ds)
    if tagged.modality is not None:
        return tagged
    description = _text(ds, "SeriesDescription")
    if _FDG.search(description):
        return Guess("pet_fdg", "PT series, description mentions FDG (no radiopharmaceutical tag)")
    if _ACETATE.search(description):
        return Guess("pet_act", "PT series, description mentions acetate (no radiopharmaceutical tag)")
    return Guess(None, "PT series with an unrecognised radiopharmaceutical; not used")


def _mr_sequence(ds: Dataset) -> Guess:
    text = _text(ds, "SeriesDescription", "ProtocolName")
    described = f"MR series described {text.strip()!r}"
    if _NOT_STRUCTURAL.search(text):
        return Guess(None, f"{described}: diffusion, perfusion, susceptibility or a map; not used")
    t1 = re.search(r"t1|mprage|spgr", text)
    if "flair" in text and not t1:  # T1-FLAIR is a T1 sequence; FLAIR alone is T2-FLAIR
        return Guess("flair", f"{described}: FLAIR")
    if re.search(r"t2", text):
        return Guess("t2", f"{described}: T2")
    if t1:
        if _PRE_CONTRAST.search(text):
            return Guess("t1", f"{described}: T1 before contrast")
        if _CONTRAST.search(text) or ds.get("ContrastBolusAgent"):
            return Guess("t1ce", f"{described}: post-contrast T1")
        return Guess("t1", f"{described}: T1")
    return Guess(None, f"{described}: sequence not recognised; not used")


def attenuation_corrected(ds: Dataset) -> bool | None:
    """Whether a PET series is attenuation-corrected (ATTN in CorrectedImage); None: untold."""
    corrected = ds.get("CorrectedImage")
    if corrected is None or corrected == "":
        return None
    values = [corrected] if isinstance(corrected, str) else list(corrected)
    return "ATTN" in {str(v).upper() for v in values}


def guess_modality(ds: Dataset) -> Guess:
    """The task modality a series (represented by one of its headers) most likely is."""
    modality = str(ds.get("Modality", "")).upper()
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if "LOCALIZER" in image_type:
        return Guess(None, f"{modality} localiser; not used")
    if modality == "CT":
        return Guess("ct", "Modality CT")
    if modality == "PT":
        if attenuation_corrected(ds) is False:
            return Guess(
                None, "PT series without attenuation correction (CorrectedImage lacks ATTN); not used"
            )
        return _pet_tracer(ds)
    if modality == "MR":
        return _mr_sequence(ds)
    return Guess(None, f"Modality {modality or 'unknown'} is not an input of any task; not used")


def ct_phase_rank(ds: Dataset) -> tuple[int, str]:
    """2 for a CT described as portal-venous, 1 for an unknown phase, 0 for another phase,
    from SeriesDescription and ProtocolName; with the words that decided."""
    text = _text(ds, "SeriesDescription", "ProtocolName")
    if _PORTAL_VENOUS.search(text) or (_VENOUS.search(text) and not _OTHER_PHASE.search(text)):
        return 2, f"described {text.strip()!r}: portal-venous phase"
    if _OTHER_PHASE.search(text):
        return 0, f"described {text.strip()!r}: not the portal-venous phase"
    return 1, "phase not described"
