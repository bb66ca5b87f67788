"""The model card's contract is typed: every shipped card fits it, and a card with a wrong
field is refused, naming the field, at export and when the service loads it."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from models.card import CardError, parse_card

DEMO = Path(__file__).resolve().parents[2] / "app" / "demo_models"


def _card(name: str) -> dict[str, Any]:
    return json.loads((DEMO / f"{name}.json").read_text())


@pytest.mark.parametrize("path", sorted(DEMO.glob("*.json")), ids=lambda p: p.stem)
def test_every_shipped_card_fits(path: Path) -> None:
    card = parse_card(json.loads(path.read_text()), path.name)
    assert card.name == path.stem and len(card.onnx_sha256) == 64


@pytest.mark.parametrize(
    ("name", "change", "field"),
    [
        ("brats_student", {"classes": "LGG HGG"}, "classes"),
        ("brats_student", {"classes": ["HGG", "LGG"]}, "card"),  # not the task's order
        ("brats_student", {"onnx_sha256": "abc"}, "onnx_sha256"),
        ("brats_student", {"task": "lung"}, "card"),
        ("brats_student", {"role": "oracle"}, "role"),
        ("hcc_lesion_student", {"input": {"layout": "x", "grid": "torso"}}, "input.grid"),
        ("hcc_lesion_student", {"modalities": ["ct", "t1"]}, "card"),
        ("hcc_segmenter", {"lesion_threshold": 2.0}, "lesion_threshold"),
        ("hcc_segmenter", {"stages": {"coarse": {"onnx_file": "c.onnx"}}}, "stages.coarse.onnx_sha256"),
        ("hcc_segmenter", {"stages": {"coarse": _card("hcc_segmenter")["stages"]["coarse"]}}, "card"),
        ("hcc_segmenter", {"task": "brats", "modalities": ["t1"]}, "card"),
    ],
)
def test_a_wrong_field_is_refused_by_name(name: str, change: dict[str, Any], field: str) -> None:
    card = {**_card(name), **change}
    with pytest.raises(CardError, match=re.escape(f"field '{field}'")):
        parse_card(card, name)


def test_decision_weights_must_be_numbers_for_the_cards_classes() -> None:
    card = _card("brats_student")
    bad = copy.deepcopy(card)
    bad["decision"]["weights"]["HGG"] = "high"
    with pytest.raises(CardError, match=re.escape("field 'decision.weights.HGG'")):
        parse_card(bad)
    bad = copy.deepcopy(card)
    bad["decision"]["weights"]["GBM"] = 1.0
    with pytest.raises(CardError, match="decision weights name"):
        parse_card(bad)


def test_the_record_rides_along_untyped() -> None:
    """Metrics, training and calibration are evidence for people, kept as written."""
    card = _card("brats_student")
    parsed = parse_card({**card, "a_note": {"anything": [1, "two"]}})
    assert parsed.model_extra is not None and parsed.model_extra["metrics"] == card["metrics"]
