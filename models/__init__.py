"""REACT-KD networks and the input contract shared by training and serving (no I/O here)."""

from models import brats, hcc, segmenter  # noqa: F401  registers networks
from models.contract import ContractError, Grid, ModelInput, Volume, prepare_input
from models.registry import (
    ModelOutput,
    create_model,
    list_models,
    model_from_checkpoint,
    register_model,
    register_segmenter,
    resolved_kwargs,
)
from models.tasks import TASKS, TaskSpec, get_task, task_of_card

__all__ = [
    "TASKS",
    "ContractError",
    "Grid",
    "ModelInput",
    "ModelOutput",
    "TaskSpec",
    "Volume",
    "create_model",
    "get_task",
    "list_models",
    "model_from_checkpoint",
    "prepare_input",
    "register_model",
    "register_segmenter",
    "resolved_kwargs",
    "task_of_card",
]
