"""Run configs: YAML and TOML files, flag overrides, and refused mistakes."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from training.config import load_config


def test_yaml_file_with_overrides_resolves_the_network(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("task: hcc\nrole: teacher\nkind: dose-aware\nepochs: 3\nmodel_kwargs: {width: 4}\n")
    cfg = load_config(path, {"data": tmp_path / "m.csv", "epochs": 5, "seed": None})
    assert cfg.model == "hcc_teacher_dose" and cfg.epochs == 5 and cfg.model_kwargs == {"width": 4}
    assert cfg.run_dir == Path("runs") / "hcc-dose-aware-s0"


def test_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('task = "brats"\nrole = "student"\nalpha = 0.3\n')
    cfg = load_config(path, {"data": tmp_path})
    assert cfg.model == "brats_student" and cfg.alpha == 0.3 and cfg.kind == "student"


def test_a_lesion_grid_run_is_named_apart_from_the_whole_grid_one(tmp_path: Path) -> None:
    cfg = load_config(
        None, {"task": "hcc", "role": "teacher", "kind": "dose-aware", "grid": "lesion", "data": tmp_path}
    )
    assert cfg.grid == "lesion" and cfg.name == "hcc-lesion-dose-aware-s0"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"task": "hcc", "role": "teacher", "kind": "hybrid"}, "unknown teacher kind 'hybrid'"),
        ({"task": "hcc", "role": "student", "alpha": 1.5}, "less than or equal to 1"),
        ({"task": "hcc", "role": "student", "grid": "liver"}, "'whole' or 'lesion'"),
        ({"task": "hcc", "role": "student", "epoch": 3}, "Extra inputs are not permitted"),
        ({"task": "hcc", "role": "student", "low_dose": [0.5, 0.2]}, "low_dose must be a range"),
        ({"task": "hcc", "role": "student", "epochs": 5, "select_from_epoch": 5}, "leaves no epoch"),
        ({"task": "hcc", "role": "student", "teachers": ["t"], "teacher_weights": [1, 2]}, "weights has 2"),
        ({"task": "hcc", "role": "student", "teachers": ["t", "u"], "teacher_weights": [0, 0]}, "not all 0"),
        ({"task": "hcc", "role": "student", "teachers": ["t"], "teacher_weights": "best"}, "teacher_weights"),
        (
            {"task": "hcc", "role": "student", "modality_dropout_weights": {"flair": 2}},
            "'flair' is not an allowed",
        ),
        ({"task": "hcc", "role": "student", "modality_dropout_weights": {"ct": -1}}, "must be positive"),
    ],
)
def test_mistakes_are_refused_with_the_reason(tmp_path: Path, values: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        load_config(None, {"data": tmp_path, **values})


def test_a_file_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        load_config(path, {})
