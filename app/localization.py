"""Where a study's lesion is, whose mask says so, and whether the study can be graded: what
the pipeline (`app.prediction`) finds before grading and the outcome (`app.outcome`) reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from app.schemas import NotGradable
from models.contract import Volume
from models.segmenter import MaskSummary, Segmentation, SegmenterInput

MaskSource = Literal["upload", "pacs", "model"]


@dataclass
class Localization:
    """Where the lesion is, and whether the study can be graded.

    source: whose mask it is (None: the task has no segmenter and none was sent).
    mask: the label map the grade uses, on its own grid; summary: what it says.
    overview: the reference image on the segmenter's grid (for the views explanations draw).
    segmentation: the segmenter's output, when it made the mask.
    reasons: why the study is not gradable (empty: gradable).
    labels_ml: each label's volume where the labels are parts of the lesion (BraTS' edema,
    necrotic core, enhancing tumour); None where the mask is an organ and its lesions.
    """

    source: MaskSource | None
    mask: Volume | None
    summary: MaskSummary | None
    overview: SegmenterInput | None
    segmentation: Segmentation | None = None
    reasons: list[NotGradable] = field(default_factory=list)
    labels_ml: dict[str, float] | None = None

    @property
    def gradable(self) -> bool:
        return not self.reasons
